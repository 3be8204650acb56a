"""report.html: one self-contained page per run (metrics, data summary, inline SVG charts, the resolved recipe)."""

from __future__ import annotations

import html
from pathlib import Path

from dlforge.core.files import write_text

STYLE = """body{font-family:system-ui,sans-serif;max-width:960px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 10px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}svg{max-width:100%;height:auto}figure{margin:1em 0}figcaption{color:#666;font-size:85%}
pre{background:#f6f6f6;padding:1em;overflow:auto;font-size:90%}"""


def _table(rows: dict[str, dict]) -> str:
    columns = sorted({k for r in rows.values() for k, v in r.items() if isinstance(v, (int, float))})
    head = "".join(f"<th>{html.escape(c)}</th>" for c in ["split", *columns])
    body = ""
    for split, values in rows.items():
        cells = "".join(f"<td>{values[c]:.4f}</td>" if isinstance(values.get(c), (int, float)) else "<td></td>"
                        for c in columns)
        body += f"<tr><td>{html.escape(split)}</td>{cells}</tr>"
    return f"<table><tr>{head}</tr>{body}</table>"


def _svg_body(path: Path) -> str:
    text = Path(path).read_text(encoding="utf-8")
    return text[text.index("<svg"):]  # our own files (report/svg.py): no XML prolog to strip, but be safe


def _warnings(metrics: dict) -> str:
    return "".join(f"<p><b>warning:</b> {html.escape(w)}</p>" for w in metrics.get("warnings", []))


def _baseline(metrics: dict) -> str:
    """The scikit-learn baselines beside the model, on the same split (or why they were skipped)."""
    baseline = metrics.get("baseline")
    if not baseline:
        return ""
    if "skipped" in baseline:
        return f"<h2>Baseline</h2><p>{html.escape(str(baseline['skipped']))}</p>"
    part = baseline.get("split", "test")
    rows = {f"this model ({part})": metrics.get(part, {})}
    rows.update({f"{model} ({part})": values for model, values in baseline.items() if isinstance(values, dict)})
    return ("<h2>Baseline</h2><p>Quick scikit-learn models fitted on the same training rows, scored on the same "
            f"{html.escape(part)} rows: does deep learning pay here?</p>{_table(rows)}")


def _privacy(metrics: dict) -> str:
    """The DP-SGD guarantee in plain words, with the numbers that recompute it."""
    p = metrics.get("privacy")
    if not p:
        return ""
    facts = ", ".join(f"{k} {html.escape(str(p[k]))}" for k in ("noise_multiplier", "sample_rate", "steps",
                                                                 "max_grad_norm", "accountant") if k in p)
    note = f"<p>{html.escape(p['validation'])}.</p>" if p.get("validation") else ""
    return (f"<h2>Privacy</h2><p>Trained with DP-SGD: ({p['epsilon']:.4g}, {p['delta']:g})-differentially private "
            f"with respect to each training row (budget epsilon {p['epsilon_budget']:g}). Any one row changes the "
            f"probability of any outcome of training by at most a factor e^epsilon, except with probability delta. "
            f"Recompute with Opacus' accountant: {facts}.</p>{note}")


def write_report(run_dir: Path, *, name: str, metrics: dict, recipe_yaml: str, plots: list[Path]) -> Path:
    splits = {k: v for k, v in metrics.items() if k in ("val", "test") and isinstance(v, dict)}
    # Inlined, so report.html is one self-contained file (the SVGs stay in plots/ for other uses).
    images = "".join(f"<figure>{_svg_body(p)}<figcaption>{html.escape(str(p.relative_to(run_dir)))}</figcaption></figure>"
                     for p in plots)
    rows = ", ".join(f"{part} {n:,}" for part, n in (metrics.get("data", {}).get("rows") or {}).items())
    facts = (f"<p>epochs run: {metrics.get('epochs_run')} · training time: {metrics.get('train_seconds', 0):.1f} s · "
             f"parameters: {metrics.get('parameters', 0):,} · rows: {html.escape(rows)}</p>")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>dlforge · {html.escape(name)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{html.escape(name)}</h1>{facts}{_warnings(metrics)}"
            f"<h2>Metrics</h2>{_table(splits)}{_baseline(metrics)}{_privacy(metrics)}"
            f"<h2>Plots</h2>{images}<h2>Recipe (resolved)</h2><pre>{html.escape(recipe_yaml)}</pre></body></html>")
    path = Path(run_dir) / "report.html"
    write_text(path, page)
    return path
