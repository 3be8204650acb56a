"""What `dlforge tune` leaves in its folder: trials.csv, best.yaml, the two plots and tune.md."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import yaml

from dlforge.core.files import write_text
from dlforge.recipe.io import validate
from dlforge.workflows.tune_study import (JOURNAL, TuneResult, best_trial, decoded, masked, open_study, require_optuna,
                                         short_value, trial_recipe)


def _trial_rows(study, paths: list[str]) -> list[dict]:
    rows = []
    for t in study.get_trials(deepcopy=False):
        duration = (t.datetime_complete - t.datetime_start).total_seconds() \
            if t.datetime_complete and t.datetime_start else None
        state = t.state.name
        if state == "FAIL" and t.user_attrs.get("interrupted"):
            state = "INTERRUPTED"
        row = {"number": t.number, "state": state, "value": t.value,
               "duration_s": round(duration, 2) if duration is not None else None,
               "epochs_run": t.user_attrs.get("epochs_run")}
        row.update({f"param:{p}": t.params.get(p) for p in paths})
        row.update({"error": t.user_attrs.get("error", ""), "retry_of": t.user_attrs.get("retry_of", ""),
                    "run_dir": t.user_attrs.get("run_dir", "")})
        rows.append(row)
    return rows


def _best_yaml(out: Path, best, recipe, metric: str) -> str:
    """The best trial's recipe as it was trained (its run's recipe.yaml), named after the study, no tune section,
    relative data paths made absolute so the file trains from anywhere."""
    run_recipe = out / best.user_attrs.get("run_dir", "") / "recipe.yaml"
    data = yaml.safe_load(run_recipe.read_text(encoding="utf-8")) if run_recipe.is_file() else \
        trial_recipe(recipe, {}).model_dump(mode="json")
    data["name"] = f"{recipe.name}-best"
    data.setdefault("training", {})["baseline"] = recipe.training.baseline
    data.pop("tune", None)
    base = Path(recipe._base_dir)
    for key in ("source", "test_source"):
        value = data.get("data", {}).get(key)
        if isinstance(value, str) and ":" not in value.split("/")[0] and not Path(value).is_absolute() \
                and (base / value).exists():
            data["data"][key] = str((base / value).resolve())
    validate(data)  # what we write must train
    params = "\n".join(f"#   {k}: {json.dumps(v)}" for k, v in decoded(recipe, best.params).items())
    head = (f"# The best trial of `dlforge tune` ({out}): trial {best.number}, {metric} {best.value:.6g}.\n"
            f"# Its sampled values:\n{params}\n# Train it with: dlforge train {out / 'best.yaml'}\n")
    return head + yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def write_outputs(out: Path, settings: dict, recipe) -> TuneResult:
    """best.yaml, trials.csv, the two plots and tune.md from the study as it stands."""
    optuna = require_optuna()
    from dlforge.report.tune import plot_history, plot_importance

    study = open_study(settings, out, recipe)
    config = recipe.tune
    paths = list(config.space)
    rows = _trial_rows(study, paths)
    files: dict[str, Path] = {}
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    write_text(out / "trials.csv", buffer.getvalue())
    files["trials"] = out / "trials.csv"
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["state"]] = counts.get(row["state"], 0) + 1
    complete = [r for r in rows if r["state"] == "COMPLETE"]
    files["history"] = plot_history([(r["number"], r["value"]) for r in complete], out / "plots" / "history.svg",
                                    metric=config.metric, maximize=config.maximize(),
                                    pruned=[r["number"] for r in rows if r["state"] == "PRUNED"])
    importances, why = {}, ""
    if len(complete) >= 2:
        try:
            from optuna.importance import FanovaImportanceEvaluator

            importances = optuna.importance.get_param_importances(
                study, evaluator=FanovaImportanceEvaluator(seed=config.seed))
        except (ValueError, RuntimeError) as exc:
            why = f"importance not computed: {exc}"
    else:
        why = "importance needs two completed trials"
    files["importance"] = plot_importance(importances, out / "plots" / "importance.svg", note=why)
    best = best_trial(study)
    best_info = None
    if best is not None:
        write_text(out / "best.yaml", _best_yaml(out, best, recipe, config.metric))
        files["best"] = out / "best.yaml"
        best_info = {"number": best.number, "value": best.value, "params": decoded(recipe, best.params),
                     "run_dir": str(out / best.user_attrs.get("run_dir", ""))}
    write_text(out / "tune.md", _summary(out, settings, recipe, rows, best_info, importances, why, counts))
    files["summary"] = out / "tune.md"
    return TuneResult(out, best_info, counts, files)


def _summary(out, settings, recipe, rows, best, importances, why, counts) -> str:
    config = recipe.tune
    direction = "maximize" if config.maximize() else "minimize"
    lines = [f"# Search: {settings['study_name']}", "",
             f"- metric: `{config.metric}` ({direction}); sampler {config.sampler} (seed {config.seed}); pruner "
             f"{config.pruner}",
             f"- trials: {len(rows)} recorded ({', '.join(f'{v} {k.lower()}' for k, v in sorted(counts.items()))}); "
             f"budget {settings['trials']}",
             f"- workers: {settings['workers']} x {settings.get('threads_per_worker', '?')} thread(s); wall time "
             f"{settings.get('seconds', 0):.0f} s; storage {masked(settings.get('storage')) or JOURNAL}", ""]
    if best:
        lines += [f"## Best: trial {best['number']}, {config.metric} {best['value']:.6g}", "",
                  "| parameter | value |", "|---|---|"]
        lines += [f"| `{k}` | `{json.dumps(v)}` |" for k, v in best["params"].items()]
        lines += ["", f"Recipe: [best.yaml](best.yaml) (`dlforge train {out / 'best.yaml'}`); run directory: "
                      f"`{best['run_dir']}`.", ""]
    else:
        lines += ["No trial completed.", ""]
    lines += ["## Parameter importance (fANOVA)", ""]
    lines += [f"- `{k}`: {v:.3f}" for k, v in importances.items()] or [f"- {why}"]
    lines += ["", "![optimisation history](plots/history.svg)", "", "![parameter importance](plots/importance.svg)", ""]
    finished = [r for r in rows if r["state"] == "COMPLETE" and r["value"] is not None]
    top = sorted(finished, key=lambda r: r["value"], reverse=config.maximize())[:10]
    lines += ["## Top completed trials", "", "| trial | value | epochs | seconds | " + " | ".join(f"`{p}`" for p in config.space)
              + " |", "|---" * (4 + len(config.space)) + "|"]
    for r in top:
        lines.append(f"| {r['number']} | {r['value']:.6g} | {r['epochs_run']} | {r['duration_s']} | "
                     + " | ".join(short_value(r[f'param:{p}']) for p in config.space) + " |")
    failed = [r for r in rows if r["state"] == "FAIL"]
    if failed:
        lines += ["", "## Failed trials", ""] + [f"- trial {r['number']}: {r['error']}" for r in failed]
    lines += ["", f"All trials: [trials.csv](trials.csv). Continue or extend: `dlforge tune --resume {out} "
                  f"[--trials N]`.", ""]
    return "\n".join(lines)
