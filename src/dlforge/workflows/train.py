"""`dlforge train`: recipe → data → model → train → evaluate → run directory, top to bottom."""

from __future__ import annotations

import csv
import io
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from dlforge.artifact.format import save_model, save_run_json, split_record
from dlforge.core.errors import DlforgeError
from dlforge.core.files import write_json, write_text
from dlforge.data import prepare, read_table
from dlforge.evaluation.baseline import baseline_for
from dlforge.models import count_parameters
from dlforge.recipe.io import dump_recipe, load_recipe, recipe_base_dir
from dlforge.recipe.training import higher_is_better
from dlforge.report import plot_confusion, plot_curves, write_report
from dlforge.training.callbacks import check_callbacks
from dlforge.training.checkpoint import has_checkpoint, load_checkpoint
from dlforge.training.feature_cache import release_feature_cache
from dlforge.training.precision import precision_notice
from dlforge.training.setup import build_training, output_scales
from dlforge.training.strategy import default_device
from dlforge.workflows.evaluate import derive_split, load_checkpoint_meta
from dlforge.workflows.lr_find import range_test_for


@dataclass
class RunResult:
    run_dir: Path
    metrics: dict
    history: list[dict]

    @property
    def report(self) -> Path:
        return self.run_dir / "report.html"


def _choose_run_dir(recipe, out: str | Path | None, overwrite: bool) -> Path:
    if out is not None:
        run_dir = Path(out)
        if run_dir.exists() and any(run_dir.iterdir()) and not overwrite:
            raise DlforgeError(f"{run_dir} already exists and is not empty", where="--out",
                               hint=f"pass --overwrite, choose another --out, or continue it with --resume {run_dir}")
        return run_dir
    base = Path("runs") / recipe.name
    run_dir, n = base, 1
    while run_dir.exists() and any(run_dir.iterdir()) and not overwrite:
        run_dir, n = base.with_name(f"{base.name}_{n}"), n + 1
    return run_dir


def train(recipe=None, *, out: str | Path | None = None, overrides: list[str] | None = None,
          resume: str | Path | None = None, overwrite: bool = False, callbacks=(), progress: bool = True,
          stop=None) -> RunResult:
    """Train a recipe (path, dict, Recipe or None for the default) and write its run directory.

    `stop` (a `dlforge.training.stop.StopRequest`, or any object with `is_set()`) ends training after the
    current step with a checkpoint and TrainingInterrupted; nothing here touches the caller's signal handlers.
    """
    if resume is not None:
        run_dir = Path(resume)
        if not has_checkpoint(run_dir):
            load_checkpoint(run_dir)  # raises the clear "no checkpoint" error
        recipe = load_recipe(run_dir / "recipe.yaml")
        base_dir = Path(load_checkpoint_meta(run_dir).get("base_dir", "."))
    else:
        recipe = load_recipe(recipe, overrides)
        run_dir = _choose_run_dir(recipe, out, overwrite)
        base_dir = recipe_base_dir(recipe)
    check_callbacks(recipe)  # a misspelt callback fails before the data is read
    config = recipe.training
    if config.threads:
        torch.set_num_threads(config.threads)
    table = read_table(recipe, base_dir)
    # The split as `evaluate` re-derives it from the data, for run.json (taken before prepare() changes the table).
    split = split_record(derive_split(recipe, table), n_rows=table.n_rows, split_config=recipe.data.split)
    prepared = prepare(recipe, table=table)
    if progress:
        _print_data_summary(prepared.report)
        notice = precision_notice(config.precision, default_device())
        if notice:
            print(f"warning: {notice}", file=sys.stderr)
    run_dir.mkdir(parents=True, exist_ok=True)
    found = None
    if recipe.training.optimizer.lr == "auto":  # resolved before recipe.yaml is written, so a resume reuses it
        found = range_test_for(recipe, prepared, plot=run_dir / "plots" / "lr_find.png")
        recipe.training.optimizer.lr = found.suggestion
    if resume is None:
        write_text(run_dir / "recipe.yaml", dump_recipe(recipe))
        write_json(run_dir / "checkpoint" / "meta.json", {"base_dir": str(base_dir)})
    built = build_training(recipe, prepared, run_dir=run_dir, callbacks=callbacks, progress=progress, stop=stop)
    model, trainer, cache_report = built.model, built.trainer, built.cache_report
    signature = prepared.signature()
    state = load_checkpoint(run_dir) if resume is not None else None
    result = trainer.fit(state)

    metrics = {part: trainer.evaluate(prepared.splits[part], detail=True) for part in ("val", "test")
               if part in prepared.splits}
    metrics.update({"train_seconds": round(result.train_seconds, 3), "epochs_run": result.epochs_run,
                    "best_epoch": result.best_epoch, "stopped_early": result.stopped_early,
                    "parameters": count_parameters(model), "data": prepared.report})
    warning = best_epoch_warning(result, config)
    if warning:
        metrics["warnings"] = [warning]
        if progress:
            print(f"warning: {warning}", file=sys.stderr)
    baseline = baseline_for(config.baseline, prepared.splits, signature, seed=config.seed,
                            units=output_scales(prepared), threads=config.threads,
                            say=lambda text: print(text, file=sys.stderr))
    if baseline is not None:
        metrics["baseline"] = baseline
    if cache_report:
        metrics["backbones"] = cache_report
    if found is not None:
        metrics["lr_find"] = found.as_dict()
    release_feature_cache(model)
    save_model(run_dir, recipe, prepared.inputs, prepared.outputs, model.cpu())
    save_run_json(run_dir, source=recipe.data.source, base_dir=base_dir, split=split)
    write_json(run_dir / "metrics.json", metrics)
    write_text(run_dir / "history.csv", _history_csv(result.history))
    plots = plot_curves(result.history, run_dir / "plots")
    plots += _confusion_plots(metrics.get("test") or metrics.get("val") or {}, signature, run_dir)
    write_report(run_dir, name=recipe.name, metrics=metrics, recipe_yaml=dump_recipe(recipe), plots=plots)
    trainer.end_run(run_dir)  # the run directory is complete: callbacks may read, copy or log it
    return RunResult(run_dir, metrics, result.history)


def best_epoch_warning(result, config) -> str | None:
    """Why more epochs would likely help: every epoch ran and the best validation loss came at the last one."""
    if result.epochs_run < config.epochs or result.epochs_run < 2:
        return None
    metric = config.early_stopping.metric if config.early_stopping else "val.loss"
    best = result.best_epoch
    if best is None:
        values = [row.get(metric) for row in result.history]
        if any(v is None for v in values):
            return None
        higher = config.early_stopping is not None and config.early_stopping.mode == "max" or (
            (config.early_stopping is None or config.early_stopping.mode == "auto") and higher_is_better(metric))
        best = 1 + max(range(len(values)), key=lambda i: values[i] if higher else -values[i])
    if best != result.epochs_run:
        return None
    return (f"the best epoch ({metric}) was the last one ({best} of {config.epochs}): training stopped while still "
            f"improving; raise training.epochs (e.g. --set training.epochs={2 * config.epochs})")


def _print_data_summary(report: dict) -> None:
    """Say what the data became, including every value a policy changed: nothing is altered silently."""

    rows = ", ".join(f"{part} {n}" for part, n in report["rows"].items())
    print(f"data: {report['source']}: {rows}" + (" (official test split)" if report["official_split"] else ""),
          file=sys.stderr)
    for column, counts in report["policies"].items():
        for policy, n in counts.items():
            print(f"  {column}: {n} value(s) {policy.replace('_', ' ')}", file=sys.stderr)


def _history_csv(history: list[dict]) -> str:
    if not history:
        return ""
    columns = list(dict.fromkeys(k for row in history for k in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(history)
    return buffer.getvalue()


def _confusion_plots(metrics: dict, signature: dict, run_dir: Path) -> list[Path]:
    plots = []
    outputs = signature["outputs"]
    for name, sig in outputs.items():
        values = metrics if len(outputs) == 1 else metrics.get(name, {})
        if "confusion_matrix" in values:
            suffix = "" if len(outputs) == 1 else f"_{name}"
            plots.append(plot_confusion(values["confusion_matrix"], [str(x) for x in sig["labels"]],
                                        run_dir / "plots" / f"confusion{suffix}.png"))
    return plots
