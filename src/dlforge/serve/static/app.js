// The web page of a dlforge server: a form built from the model's input signature (GET /v1/model),
// predictions from POST /v1/predict shown as top-k bars with the latency. No framework, no external
// assets; server data is only ever inserted as text (never as HTML).
"use strict";

const $ = (id) => document.getElementById(id);
const KEY = "dlforge-api-key";
let signature = null;

function headers(extra = {}) {
  const key = sessionStorage.getItem(KEY);
  return key ? { ...extra, Authorization: `Bearer ${key}` } : extra;
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "text") node.textContent = v; else node.setAttribute(k, v);
  }
  for (const child of children) node.append(child);
  return node;
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

async function loadModel() {
  const response = await fetch("/v1/model", { headers: headers() });
  if (response.status === 401) {
    $("key-section").hidden = false;
    $("model-meta").textContent = "this server needs an API key";
    return;
  }
  if (!response.ok) { showError(`cannot read the model: HTTP ${response.status}`); return; }
  const info = await response.json();
  signature = info;
  $("key-section").hidden = true;
  $("model-name").textContent = info.name;
  const test = info.metrics && (info.metrics.test || info.metrics.val);
  const score = test && (test.accuracy ?? test.r2);
  $("model-meta").textContent = `version ${info.version}` + (score != null ? ` · test score ${score.toFixed(4)}` : "");
  buildForm(info.inputs);
}

function imageField(name, sig) {
  const input = el("input", { type: "file", accept: "image/*", id: `in-${name}`, name });
  const preview = el("img", { alt: "" });
  preview.hidden = true;
  const drop = el("label", { class: "drop", for: `in-${name}` },
    el("span", { text: `Drop an image or click to choose (resized to ${sig.shape[1]}×${sig.shape[2]})` }), input, preview);
  const show = () => {
    const file = input.files[0];
    if (file) { preview.src = URL.createObjectURL(file); preview.hidden = false; }
  };
  input.addEventListener("change", show);
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault(); drop.classList.remove("over");
    if (e.dataTransfer.files.length) { input.files = e.dataTransfer.files; show(); }
  });
  return drop;
}

function buildForm(inputs) {
  const fields = $("fields");
  fields.replaceChildren();
  for (const [name, sig] of Object.entries(inputs)) {
    const label = el("label", { for: `in-${name}`, text: name }, el("small", { text: sig.type }));
    let control;
    if (sig.type === "image") {
      control = imageField(name, sig);
    } else if (sig.type === "number") {
      control = el("input", { type: "number", step: "any", id: `in-${name}`, name, placeholder: "empty: missing" });
    } else if (sig.type === "binary") {
      control = el("select", { id: `in-${name}`, name });
      for (const value of sig.values || []) control.append(el("option", { value, text: value }));
    } else if (sig.type === "category") {
      const list = el("datalist", { id: `values-${name}` });
      for (const value of sig.values || []) list.append(el("option", { value }));
      control = el("span", {}, el("input", { type: "text", id: `in-${name}`, name, list: `values-${name}`,
        value: (sig.values || [""])[0] || "" }), list);
    } else if (sig.type === "text") {
      control = el("textarea", { id: `in-${name}`, name });
    } else {
      control = el("input", { type: "text", id: `in-${name}`, name });
    }
    fields.append(el("div", { class: "field" }, label, control));
  }
  $("predict-form").hidden = false;
}

function readAsDataURL(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

async function record() {
  const row = {};
  for (const [name, sig] of Object.entries(signature.inputs)) {
    const control = $(`in-${name}`);
    if (sig.type === "image") {
      if (!control.files.length) throw new Error(`choose an image for '${name}'`);
      row[name] = await readAsDataURL(control.files[0]);
    } else if (sig.type === "number") {
      row[name] = control.value === "" ? null : Number(control.value);
    } else {
      row[name] = control.value === "" && sig.type !== "text" ? null : control.value;
    }
  }
  return row;
}

function render(prediction, elapsed, serverTiming) {
  $("prediction").textContent = prediction.label ?? String(prediction.value);
  $("latency").textContent = `round trip ${elapsed.toFixed(1)} ms` + (serverTiming ? ` · server ${serverTiming}` : "");
  const bars = $("bars");
  bars.replaceChildren();
  for (const { label, probability } of prediction.top_k || []) {
    const fill = el("div", { class: "fill" });
    fill.style.width = `${(probability * 100).toFixed(1)}%`;
    bars.append(el("div", { class: "bar", "data-label": label },
      el("span", { class: "label", text: label }), el("div", { class: "track" }, fill),
      el("span", { class: "pct", text: `${(probability * 100).toFixed(1)}%` })));
  }
  $("result").hidden = false;
}

async function predict(event) {
  event.preventDefault();
  showError("");
  $("submit").disabled = true;
  try {
    const body = JSON.stringify({ records: [await record()] });
    const started = performance.now();
    const response = await fetch("/v1/predict", {
      method: "POST", body, headers: headers({ "Content-Type": "application/json" }),
    });
    const elapsed = performance.now() - started;
    const answer = await response.json();
    if (!response.ok) throw new Error(answer.detail || `HTTP ${response.status}`);
    const timing = (response.headers.get("Server-Timing") || "").replace(/;dur=/g, " ").replace(/,/g, " ms,");
    render(answer.predictions[0], elapsed, timing ? `${timing} ms` : "");
  } catch (error) {
    showError(error.message);
  } finally {
    $("submit").disabled = false;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("predict-form").addEventListener("submit", predict);
  $("key-save").addEventListener("click", () => {
    sessionStorage.setItem(KEY, $("api-key").value.trim());
    loadModel();
  });
  loadModel().catch((error) => showError(error.message));
});
