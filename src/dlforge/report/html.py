"""report.html: one self-contained page per run, built from what the run directory holds.

Sections, always in this order: recipe, data, data audit (audit.json), learning curves, metrics (and baselines),
confusion matrix, per-class metrics, regression plots, calibration, fairness, worst mistakes (with explanations/),
and what is missing. Charts are our own SVG, inlined; explanation images are inlined as data URIs; so the page is
one file with no external assets. A run interrupted before evaluation gets the sections its files allow and a
list of what is missing, with the command that finishes it. `dlforge report RUN` rebuilds the page from disk.
"""

from __future__ import annotations

import csv
import html
import io
import json
from pathlib import Path

from dlforge.core.files import write_text
from dlforge.report.sections import (audit_section, calibration_section, data_section, fairness_section,
                                     metrics_table, mistakes_section, note, per_class_section, recipe_section,
                                     section, svg_figure)

STYLE = """body{font-family:system-ui,sans-serif;max-width:1040px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 10px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}svg,img{max-width:100%;height:auto}
figure{margin:1em 0}figcaption{color:#666;font-size:85%}iframe{width:100%;height:260px;border:1px solid #ddd}
pre{background:#f6f6f6;padding:1em;overflow:auto;font-size:90%}.missing{color:#a33}.note{color:#555}
nav a{margin-right:.8em}section{border-top:1px solid #eee;margin-top:1.5em}"""

SECTIONS = (("recipe", "Recipe"), ("data", "Data"), ("audit", "Data audit"), ("curves", "Learning curves"),
            ("metrics", "Metrics"), ("confusion", "Confusion matrix"), ("per-class", "Per-class metrics"),
            ("regression", "Regression plots"), ("calibration", "Calibration"), ("fairness", "Fairness"),
            ("mistakes", "Worst mistakes"), ("missing", "Missing"))
RUN_FILES = ("recipe.yaml", "metrics.json", "history.csv", "model.json", "model.safetensors")


def _kind(path: Path) -> str:
    name = path.name
    if name.startswith("confusion"):
        return "confusion"
    if name.startswith(("predicted_vs_actual", "residuals")):
        return "regression"
    if name.startswith("reliability"):
        return "calibration"
    return "curves"


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    except (OSError, ValueError):
        return None


def _read_recipe(run_dir: Path) -> tuple[str | None, dict | None]:
    path = run_dir / "recipe.yaml"
    if not path.is_file():
        return None, None
    text = path.read_text(encoding="utf-8")
    try:
        import yaml

        data = yaml.safe_load(text)
    except Exception:  # noqa: BLE001 - a damaged recipe.yaml is shown as text, not parsed
        data = None
    return text, data if isinstance(data, dict) else None


def _history_rows(run_dir: Path) -> list[dict]:
    path = run_dir / "history.csv"
    if not path.is_file():
        return []
    rows = list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"))))
    return [{k: float(v) if v not in ("", None) else None for k, v in row.items()} for row in rows]


def _baseline(metrics: dict) -> str:
    baseline = metrics.get("baseline")
    if not baseline:
        return ""
    if "skipped" in baseline:
        return f"<h3>Baseline</h3><p>{html.escape(str(baseline['skipped']))}</p>"
    part = baseline.get("split", "test")
    rows = {f"this model ({part})": metrics.get(part, {})}
    rows.update({f"{model} ({part})": values for model, values in baseline.items() if isinstance(values, dict)})
    if "most_popular" in baseline:  # a ranking run: full ranking, and the sampled protocol beside it
        sampled = (metrics.get("sampled") or {}).get(part)
        if sampled:
            rows[f"this model, sampled protocol ({part})"] = sampled
        return ("<h3>Baseline</h3><p>Most popular (training counts; the user's seen items left out), on the same "
                f"{html.escape(part)} users, by full ranking and by the sampled protocol (1 held-out item + sampled "
                "negatives). The sampled figures flatter every model and can reorder them (Krichene &amp; Rendle "
                f"2020): compare the full-ranking rows.</p>{metrics_table(rows)}")
    return ("<h3>Baseline</h3><p>Quick scikit-learn models fitted on the same training rows, scored on the same "
            f"{html.escape(part)} rows: does deep learning pay here?</p>{metrics_table(rows)}")


def _privacy(metrics: dict) -> str:
    """The DP-SGD guarantee in plain words, with the numbers that recompute it."""
    p = metrics.get("privacy")
    if not p:
        return ""
    facts = ", ".join(f"{k} {html.escape(str(p[k]))}" for k in ("noise_multiplier", "sample_rate", "steps",
                                                                 "max_grad_norm", "accountant") if k in p)
    note = f"<p>{html.escape(p['validation'])}.</p>" if p.get("validation") else ""
    return (f"<h3>Privacy</h3><p>Trained with DP-SGD: ({p['epsilon']:.4g}, {p['delta']:g})-differentially private "
            f"with respect to each training row (budget epsilon {p['epsilon_budget']:g}). Any one row changes the "
            f"probability of any outcome of training by at most a factor e^epsilon, except with probability delta. "
            f"Recompute with Opacus' accountant: {facts}.</p>{note}")


def _missing(run_dir: Path, metrics: dict | None, plots: list[Path]) -> tuple[str, list[str]]:
    absent = [name for name in RUN_FILES if not (run_dir / name).is_file()]
    if metrics is not None and not (run_dir / "metrics.json").is_file():
        absent = [n for n in absent if n != "metrics.json"]  # handed over by the caller
    lines = []
    if absent:
        lines.append(f"files not in the run directory: {', '.join(absent)}")
        if (run_dir / "checkpoint").is_dir():
            lines.append(f"the run was interrupted before it finished; `dlforge train --resume {run_dir}` completes "
                         "it and rewrites this page")
    if not plots:
        lines.append("no charts: plots/ is empty or absent")
    return section("missing", "Missing", "".join(note(line, "missing") for line in lines) if lines
                   else note("nothing: the run directory is complete")), lines


def build_report(run_dir: Path, *, name: str | None = None, metrics: dict | None = None,
                 recipe_yaml: str | None = None, plots: list[Path] | None = None) -> str:
    """The page's HTML. Arguments override what the run directory holds (training passes what it just computed)."""
    run_dir = Path(run_dir)
    disk_yaml, recipe = _read_recipe(run_dir)
    recipe_yaml = recipe_yaml if recipe_yaml is not None else disk_yaml
    if recipe is None and recipe_yaml is not None:
        try:
            import yaml

            recipe = yaml.safe_load(recipe_yaml)
            recipe = recipe if isinstance(recipe, dict) else None
        except Exception:  # noqa: BLE001
            recipe = None
    metrics = metrics if metrics is not None else _read_json(run_dir / "metrics.json")
    name = name or (recipe or {}).get("name") or run_dir.name
    if plots is None:
        plots = sorted((run_dir / "plots").glob("*.svg")) if (run_dir / "plots").is_dir() else []
        if not plots and not (run_dir / "metrics.json").is_file():  # interrupted: draw the curves the checkpoint kept
            plots = _curves_from_checkpoint(run_dir)
    figures: dict[str, str] = {}
    for path in plots:
        figures[_kind(path)] = figures.get(_kind(path), "") + svg_figure(path, run_dir)
    missing, missing_lines = _missing(run_dir, metrics, plots)

    facts = ""
    if metrics is not None:
        rows = ", ".join(f"{part} {n:,}" for part, n in ((metrics.get("data") or {}).get("rows") or {}).items())
        facts = (f"<p>epochs run: {metrics.get('epochs_run')} · training time: {metrics.get('train_seconds') or 0:.1f} s"
                 f" · parameters: {metrics.get('parameters') or 0:,} · rows: {html.escape(rows)}</p>")
        facts += "".join(f"<p><b>warning:</b> {html.escape(w)}</p>" for w in metrics.get("warnings", []))
    status = "complete" if not missing_lines else "incomplete"
    splits = {k: v for k, v in (metrics or {}).items() if k in ("val", "test") and isinstance(v, dict)}
    types = {o.get("type") for o in (recipe or {}).get("outputs") or [] if isinstance(o, dict)}

    def plotted(anchor: str, title: str, absent: str) -> str:
        return section(anchor, title, figures.get(anchor) or note(absent, "missing" if metrics is None else "note"))

    classes = types & {"category", "binary"}
    parts = [
        recipe_section(recipe, recipe_yaml),
        data_section(metrics),
        audit_section(run_dir),
        plotted("curves", "Learning curves", "missing: no curves (history.csv and plots/ are written after training)"
                if metrics is None else "no curves were drawn (no epoch finished)"),
        section("metrics", "Metrics", (metrics_table(splits) + _baseline(metrics) + _privacy(metrics)) if metrics is not None
                else note("missing: metrics.json (the run has not been evaluated)", "missing")),
        plotted("confusion", "Confusion matrix", "missing: written after evaluation" if metrics is None else
                "not applicable: no category or binary output" if not classes else "no confusion matrix was drawn"),
        per_class_section(metrics),
        plotted("regression", "Regression plots", "missing: written after evaluation" if metrics is None else
                "not applicable: no number output" if "number" not in types else "no regression plot was drawn"),
        calibration_section(metrics, figures.get("calibration", "")),
        fairness_section(metrics),
        mistakes_section(run_dir, metrics),
        missing,
    ]
    nav = "<nav>" + "".join(f"<a href='#{a}'>{html.escape(t)}</a>" for a, t in SECTIONS) + "</nav>"
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>dlforge · {html.escape(name)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{html.escape(name)}</h1><p class='note'>run directory: "
            f"{html.escape(str(run_dir))} · {status}</p>{facts}{nav}{''.join(parts)}</body></html>")


def _curves_from_checkpoint(run_dir: Path) -> list[Path]:
    """An interrupted run has no history.csv: the history its last checkpoint kept draws the curves (the state is
    read with torch's weights_only loader, never unpickling code)."""
    from dlforge.core.errors import DlforgeError
    from dlforge.report.plots import plot_curves
    from dlforge.training.checkpoint import has_checkpoint, load_checkpoint

    rows = _history_rows(run_dir)
    if not rows and has_checkpoint(run_dir):
        try:
            rows = list(load_checkpoint(run_dir).get("history") or [])
        except DlforgeError:
            rows = []
    return plot_curves(rows, run_dir / "plots") if rows else []


def write_report(run_dir: Path, *, name: str | None = None, metrics: dict | None = None,
                 recipe_yaml: str | None = None, plots: list[Path] | None = None) -> Path:
    """Write <run_dir>/report.html (atomically) and return its path."""
    path = Path(run_dir) / "report.html"
    write_text(path, build_report(run_dir, name=name, metrics=metrics, recipe_yaml=recipe_yaml, plots=plots))
    return path


__all__ = ["SECTIONS", "build_report", "write_report"]
