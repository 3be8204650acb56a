"""The sections of report.html, each a function of what the run directory holds (HTML text in, HTML text out).

Every section is always present (the page reads the same for every run), and says plainly when its part of the
run does not apply (no regression plots for a classifier) or is missing (a run interrupted before evaluation).
Values from files are escaped; nothing here runs code from the run directory.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

e = html.escape
MAX_IMAGE_BYTES = 2 * 2**20  # a larger explanation image is linked, not inlined, so the page stays light
MAX_IMAGES = 24
MAX_TABLE_ROWS = 60


def section(anchor: str, title: str, body: str) -> str:
    return f"<section id='{anchor}'><h2>{e(title)}</h2>{body}</section>"


def note(text: str, kind: str = "note") -> str:
    return f"<p class='{kind}'>{e(text)}</p>"


def fmt(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, int):
        return f"{value:,}"
    return "" if value is None else e(str(value))


def table(header: list[str], rows: list[list], *, limit: int = MAX_TABLE_ROWS) -> str:
    head = "".join(f"<th>{e(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{fmt(c)}</td>" for c in row) + "</tr>" for row in rows[:limit])
    more = f"<p class='note'>… {len(rows) - limit} more row(s)</p>" if len(rows) > limit else ""
    return f"<table><tr>{head}</tr>{body}</table>{more}"


def svg_figure(path: Path, run_dir: Path) -> str:
    text = Path(path).read_text(encoding="utf-8")
    try:
        caption = str(Path(path).relative_to(run_dir))
    except ValueError:
        caption = Path(path).name
    return f"<figure>{text[text.index('<svg'):]}<figcaption>{e(caption)}</figcaption></figure>"


def image_figure(path: Path, caption: str) -> str:
    kinds = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif",
             ".webp": "image/webp", ".svg": "image/svg+xml"}
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return (f"<figure><img alt='{e(caption, quote=True)}' src='data:{kinds[path.suffix.lower()]};base64,{data}'>"
            f"<figcaption>{e(caption)}</figcaption></figure>")


# -- recipe and data ----------------------------------------------------------------------------------------------
def recipe_section(recipe: dict | None, recipe_yaml: str | None) -> str:
    if recipe_yaml is None:
        return section("recipe", "Recipe", note("missing: recipe.yaml (the run stopped before it was written)", "missing"))
    body = ""
    if recipe:
        data, training = recipe.get("data") or {}, recipe.get("training") or {}
        inputs = ", ".join(f"{f.get('name')} ({f.get('type')})" for f in recipe.get("inputs") or [])
        outputs = ", ".join(f"{f.get('name')} ({f.get('type')})" for f in recipe.get("outputs") or [])
        optimizer = training.get("optimizer") or {}
        evaluation = recipe.get("evaluation") or {}
        rows = [["data", data.get("source")], ["split", json.dumps(data.get("split"))], ["inputs", inputs],
                ["outputs", outputs], ["combiner", json.dumps(recipe.get("combiner"))],
                ["training", f"{training.get('epochs')} epochs, batch {training.get('batch_size')}, "
                             f"{optimizer.get('name')} lr {optimizer.get('lr')}, seed {training.get('seed')}"]]
        if evaluation.get("sensitive") or evaluation.get("calibrate") or evaluation.get("mitigate"):
            rows.append(["evaluation", json.dumps({k: v for k, v in evaluation.items() if v})])
        body = table(["", "value"], rows)
    return section("recipe", "Recipe", body + f"<details><summary>resolved recipe.yaml</summary><pre>{e(recipe_yaml)}"
                                              "</pre></details>")


def data_section(metrics: dict | None) -> str:
    data = (metrics or {}).get("data")
    if not data:
        return section("data", "Data", note("missing: the data summary is written with metrics.json, after training",
                                            "missing"))
    rows = [[part, n] for part, n in (data.get("rows") or {}).items()]
    body = f"<p>source: {e(str(data.get('source')))}{' (official test split)' if data.get('official_split') else ''}</p>"
    body += table(["split", "rows"], rows)
    changed = [[column, policy.replace("_", " "), n] for column, counts in (data.get("policies") or {}).items()
               for policy, n in counts.items()]
    if changed:
        body += "<h3>Values changed by a policy</h3>" + table(["column", "what", "values"], changed)
    body += "".join(note(f"note: {n}") for n in data.get("notes", []))
    return section("data", "Data", body)


def audit_section(run_dir: Path) -> str:
    path = next((p for p in (run_dir / "audit.json", run_dir / "audit" / "audit.json") if p.is_file()), None)
    if path is None:
        return section("audit", "Data audit", note(f"no audit.json in this run directory; `dlforge audit "
                                                   f"{run_dir / 'recipe.yaml'} --out {run_dir}` writes one"))
    try:
        found = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return section("audit", "Data audit", note(f"{path.name} cannot be read ({exc.__class__.__name__})", "missing"))
    if not isinstance(found, dict):
        return section("audit", "Data audit", note(f"{path.name} holds no findings object", "missing"))
    body = ""
    if isinstance(found.get("summary"), list):
        body += "<ul>" + "".join(f"<li>{e(str(line))}</li>" for line in found["summary"]) + "</ul>"
    counts = []
    for key, value in found.items():
        if key in ("summary", "columns"):
            continue
        if isinstance(value, list):
            counts.append([key.replace("_", " "), len(value)])
        elif isinstance(value, (int, float, str)) and not isinstance(value, bool):
            counts.append([key.replace("_", " "), value])
        elif isinstance(value, dict) and "skipped" in value:
            counts.append([key.replace("_", " "), f"skipped: {value['skipped']}"])
    if counts:
        body += table(["finding", "value"], counts)
    page = path.with_name("audit.html")
    if page.is_file():
        body += f"<p>The full audit: <a href='{e(str(page.relative_to(run_dir)), quote=True)}'>{e(page.name)}</a></p>"
    return section("audit", "Data audit", body or note("audit.json lists no findings"))


# -- metrics --------------------------------------------------------------------------------------------------------
def metrics_table(rows: dict[str, dict]) -> str:
    columns = sorted({k for r in rows.values() for k, v in r.items() if isinstance(v, (int, float))
                      and not isinstance(v, bool)})
    return table(["split", *columns], [[split, *[values.get(c) for c in columns]] for split, values in rows.items()])


def per_class_section(metrics: dict | None) -> str:
    if metrics is None:
        return section("per-class", "Per-class metrics", note("missing: metrics.json", "missing"))
    part = "test" if isinstance(metrics.get("test"), dict) else "val"
    values = metrics.get(part) or {}
    blocks = {"": values} if "per_class" in values or "per_label" in values else \
        {name: v for name, v in values.items() if isinstance(v, dict) and ("per_class" in v or "per_label" in v)}
    if not blocks and "confusion_matrix" in values and "positive_label" in values:
        blocks = {"": {"per_class": _binary_per_class(values["confusion_matrix"], str(values["positive_label"]))}}
    body = ""
    for name, block in blocks.items():
        per = block.get("per_class") or block.get("per_label") or {}
        keys = list(dict.fromkeys(k for row in per.values() for k in row))
        body += (f"<h3>{e(name)} ({e(part)})</h3>" if name else f"<p>{e(part)} split</p>")
        body += table(["class", *keys], [[label, *[row.get(k) for k in keys]] for label, row in per.items()])
    return section("per-class", "Per-class metrics",
                   body or note("not applicable: no category, binary-as-classes or multilabel output with per-class "
                                "figures"))


def _binary_per_class(matrix: list[list[int]], positive: str) -> dict:
    """Precision, recall, F1 and support of each class of a binary output, from its 2x2 confusion matrix."""
    out = {}
    for k, label in enumerate(("negative", f"{positive} (positive)")):
        tp = matrix[k][k]
        predicted = matrix[0][k] + matrix[1][k]
        support = sum(matrix[k])
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        out[label] = {"precision": precision, "recall": recall, "f1": f1, "support": support}
    return out


def calibration_section(metrics: dict | None, figures: str) -> str:
    cal = (metrics or {}).get("calibration")
    if not cal:
        why = "missing: metrics.json" if metrics is None else "not applicable: calibration needs a category or binary output"
        return section("calibration", "Calibration", note(why, "missing" if metrics is None else "note"))
    rows = [["model", 100 * cal["ece"], cal.get("nll")]]
    if "after" in cal:
        rows.append([f"temperature-scaled (T = {cal['temperature']:.3f}, fitted on validation)",
                     100 * cal["after"]["ece"], cal["after"].get("nll")])
    body = (f"<p>Expected calibration error over {cal['reliability']['bins']} equal-width confidence bins on the "
            f"{e(cal['split'])} split; lower is better.</p>" + table(["probabilities", "ECE (%)", "NLL"], rows))
    if "temperature_skipped" in cal:
        body += note(f"temperature scaling skipped: {cal['temperature_skipped']}")
    return section("calibration", "Calibration", body + figures)


def _fairness_rows(report: dict, after: dict | None) -> str:
    body = ""
    for grouping, block in report.items():
        keys = [k for k in ("count", "accuracy", "selection_rate", "tpr", "fpr", "ece")
                if any(k in row for row in block["groups"].values())]
        header = ["group", *keys] + ([f"{k} after" for k in keys if k not in ("count", "ece")] if after else [])
        rows = []
        for label, row in block["groups"].items():
            later = ((after or {}).get(grouping) or {}).get("groups", {}).get(label, {})
            rows.append([label, *[row.get(k) for k in keys],
                         *([later.get(k) for k in keys if k not in ("count", "ece")] if after else [])])
        body += f"<h3>by {e(grouping)}</h3>" + table(header, rows)
        if block.get("small_groups"):
            body += note(f"left out of the disparities (fewer rows than evaluation.min_group_rows): "
                         f"{', '.join(block['small_groups'])}")
        if "skipped" in (block.get("disparities") or {}):
            body += note(f"disparities: {block['disparities']['skipped']}")
        elif "disparities" in block:
            later = ((after or {}).get(grouping) or {}).get("disparities", {})
            body += table(["disparity", "before", *(["after mitigation"] if after else [])],
                          [[k.replace("_", " "), v, *([later.get(k)] if after else [])]
                           for k, v in block["disparities"].items()])
    return body


def fairness_section(metrics: dict | None) -> str:
    fair = (metrics or {}).get("fairness")
    if not fair:
        why = "missing: metrics.json" if metrics is None else \
            "not measured: set evaluation.sensitive (e.g. [sex, race]) in the recipe"
        return section("fairness", "Fairness", note(why, "missing" if metrics is None else "note"))
    if "skipped" in fair:
        return section("fairness", "Fairness", note(f"skipped: {fair['skipped']}"))
    body = (f"<p>Per group on the {e(fair['split'])} split (ECE: calibration error within the group). Differences: "
            "max − min over groups (0 is parity); ratios: min / max (1 is parity).</p>")
    mitigation = fair.get("mitigation")
    if mitigation:
        body += (f"<p>Mitigation: {e(mitigation['method'])} ({e(mitigation['constraint'])}) by "
                 f"{e(', '.join(mitigation['by']))}, thresholds fitted on validation, applied by predict and serve."
                 "</p>")
    if "mitigation_skipped" in fair:
        body += note(f"mitigation skipped: {fair['mitigation_skipped']}")
    body += _fairness_rows(fair["before"], fair.get("after"))
    if fair.get("thresholds"):
        body += "<h3>Group thresholds (on the positive probability)</h3>" + table(
            ["group", "p0", "t0", "p1", "t1"],
            [[g, r["p0"], f"{r['op0']} {r['t0']:.4f}", r["p1"], f"{r['op1']} {r['t1']:.4f}"]
             for g, r in fair["thresholds"].items()])
    return section("fairness", "Fairness", body)


# -- mistakes and explanations --------------------------------------------------------------------------------------
def _why(run_dir: Path) -> dict:
    """row -> "column 41%, column 20%" from explanations/mistakes/mistakes.json, when `explain --mistakes` ran."""
    path = run_dir / "explanations" / "mistakes" / "mistakes.json"
    try:
        found = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        return {r["row"]: ", ".join(f"{n} {s:.0%}" for n, s in r["top"]) for r in found.get("rows") or []}
    except (ValueError, KeyError, TypeError):  # a damaged file: the table goes without the column
        return {}


def _explanations(run_dir: Path) -> str:
    folder = run_dir / "explanations"
    if not folder.is_dir():
        return note(f"no explanations/ in this run directory; `dlforge explain {run_dir} ... --out "
                    f"{folder}` writes them")
    body, images = "", 0
    for path in sorted(folder.rglob("*")):
        if not path.is_file():
            continue
        caption = str(path.relative_to(run_dir))
        suffix = path.suffix.lower()
        if suffix in (".png", ".jpg", ".jpeg", ".gif", ".webp"):
            if images >= MAX_IMAGES or path.stat().st_size > MAX_IMAGE_BYTES:
                body += f"<p><a href='{e(caption, quote=True)}'>{e(caption)}</a></p>"
            else:
                body += image_figure(path, caption)
                images += 1
        elif suffix == ".svg":
            body += svg_figure(path, run_dir)
        elif suffix == ".html" and path.stat().st_size <= MAX_IMAGE_BYTES:
            page = path.read_text(encoding="utf-8", errors="replace")
            body += (f"<figure><iframe sandbox title='{e(caption, quote=True)}' srcdoc='{e(page, quote=True)}'>"
                     f"</iframe><figcaption>{e(caption)}</figcaption></figure>")
        elif suffix == ".json" and path.stat().st_size <= MAX_IMAGE_BYTES:
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except ValueError:
                continue
            if isinstance(data, dict):
                scalars = [[k, v] for k, v in data.items() if isinstance(v, (str, int, float)) and not isinstance(v, bool)]
                lists = [[k, "; ".join(map(str, v[:5]))] for k, v in data.items()
                         if isinstance(v, list) and v and all(isinstance(x, str) for x in v)]
                body += f"<h4>{e(caption)}</h4>" + table(["", "value"], scalars + lists)
    return body or note("explanations/ holds no images or pages")


def mistakes_section(run_dir: Path, metrics: dict | None) -> str:
    path = run_dir / "mistakes.json"
    if not path.is_file():
        why = "missing: mistakes.json is written after training" if metrics is None else \
            "no mistakes.json (evaluation.mistakes is 0, or the run predates it)"
        return section("mistakes", "Worst mistakes", note(why, "missing" if metrics is None else "note") +
                       "<h3>Explanations</h3>" + _explanations(run_dir))
    found = json.loads(path.read_text(encoding="utf-8"))
    rows = found.get("rows") or []
    if not rows:
        body = note(found.get("skipped") or "no mistakes on this split")
    else:
        inputs = list(dict.fromkeys(k for r in rows for k in (r.get("inputs") or {})))[:8]
        extra = "loss" if any("loss" in r for r in rows) else "error"
        why = _why(run_dir)  # `dlforge explain RUN --mistakes`: the inputs that decided each mistake
        header = ["row", "true", "predicted", *(["confidence"] if extra == "loss" else []), extra,
                  *(["why (share of the explanation)"] if why else []), *inputs]
        body = (f"<p>The {len(rows)} {e(found.get('split', 'test'))} rows with the highest {e(found.get('ranked_by', ''))}"
                " (row: position in the data file's rows).</p>")
        body += table(header, [[r.get("row", r.get("position")), r.get("true"), r.get("predicted"),
                                *([r.get("confidence")] if extra == "loss" else []), r.get(extra),
                                *([why.get(r.get("row"), "")] if why else []),
                                *[(r.get("inputs") or {}).get(c) for c in inputs]] for r in rows])
    return section("mistakes", "Worst mistakes", body + "<h3>Explanations</h3>" + _explanations(run_dir))


__all__ = ["audit_section", "calibration_section", "data_section", "fairness_section", "metrics_table", "mistakes_section",
           "note", "per_class_section", "recipe_section", "section", "svg_figure", "table"]
