"""`dlforge train`: recipe → data → model → train → evaluate → run directory, top to bottom.

Crash safety: every file is written atomically (core/files.py); `--overwrite` moves the old run out of the
way before anything new is written; `--resume` removes temp files a kill left behind, refuses a checkpoint
written by another recipe, does nothing for a complete run, and redoes only the post-training phase
(evaluation, model, report) of a run whose training had finished. A stop request (Ctrl-C, SIGTERM) during
that phase ends it between two writes with TrainingInterrupted; the resume finishes it.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from dlforge.artifact.format import save_model, save_run_json, split_record
from dlforge.audit.quick import quick_checks
from dlforge.core.errors import ArtifactError, DlforgeError, TrainingInterrupted
from dlforge.core.files import clean_temp_files, is_temp_file, write_json, write_text
from dlforge.data import prepare, read_table
from dlforge.data.prepare import describe as describe_data
from dlforge.evaluation.baseline import baseline_for
from dlforge.evaluation.fairness import check_sensitive_columns
from dlforge.evaluation.metrics import load_backend as load_metric_backend
from dlforge.evaluation.recommend_report import ranking_report
from dlforge.models.recommend import RecommenderModel
from dlforge.models import count_parameters
from dlforge.recipe.io import DATA_SUFFIXES, dump_recipe, load_recipe, recipe_base_dir
from dlforge.recipe.training import higher_is_better
from dlforge.report import plot_confusion, plot_curves, write_report
from dlforge.report.regression import plot_predicted_vs_actual, plot_residuals
from dlforge.training import distributed
from dlforge.training.callbacks import check_callbacks, default_tracking
from dlforge.training.checkpoint import CHECKPOINT_DIR, has_checkpoint, load_checkpoint
from dlforge.training.cross_fit import cross_fit, has_member_checkpoint
from dlforge.training.feature_cache import release_feature_cache
from dlforge.training.precision import precision_notice
from dlforge.training.setup import build_training, output_scales
from dlforge.training.privacy import VALIDATION_NOTE, plan_for
from dlforge.training.refit import refit, refit_epochs
from dlforge.training.strategy import StatefulStrategy, default_device
from dlforge.workflows.assess import assess
from dlforge.workflows.evaluate import derive_split, load_checkpoint_meta
from dlforge.workflows.init import holdout_note, missing_target
from dlforge.workflows.lr_find import range_test_for


@dataclass
class RunResult:
    run_dir: Path
    metrics: dict
    history: list[dict]

    @property
    def report(self) -> Path:
        return self.run_dir / "report.html"


META = Path(CHECKPOINT_DIR) / "meta.json"  # base_dir, recipe path, lr_find result, and "complete" once done
OLD_SUFFIX = ".dlforge-old"  # a run moved aside by --overwrite, deleted right after
# What a complete run holds; if one is missing, a resume redoes the post-training phase that writes them.
RUN_FILES = ("model.safetensors", "model.json", "run.json", "metrics.json", "history.csv", "report.html")


def _only_temp_files(run_dir: Path) -> bool:
    """True for a directory holding nothing but temp files of interrupted writes (a kill during the first one)."""
    paths = list(run_dir.rglob("*")) if run_dir.is_dir() else []
    return bool(paths) and all(p.is_dir() or is_temp_file(p) for p in paths)


def choose_run_dir(recipe, out: str | Path | None, overwrite: bool) -> Path:
    if out is not None:
        run_dir = Path(out)
        if _only_temp_files(run_dir):  # what a kill during the run's very first write leaves: as good as empty
            shutil.rmtree(run_dir)
        if run_dir.exists() and any(run_dir.iterdir()):
            if not overwrite:
                raise DlforgeError(f"{run_dir} already exists and is not empty", where="--out",
                                   hint=f"pass --overwrite, choose another --out, or continue it with --resume {run_dir}")
            _clear_run_dir(run_dir)
        return run_dir
    base = Path("runs") / recipe.name
    run_dir, n = base, 1
    while run_dir.exists() and any(run_dir.iterdir()) and not overwrite:
        run_dir, n = base.with_name(f"{base.name}_{n}"), n + 1
    if overwrite and run_dir.exists() and any(run_dir.iterdir()):
        _clear_run_dir(run_dir)
    return run_dir


def _clear_run_dir(run_dir: Path) -> None:
    """Remove an old run before a new one is written into its place (--overwrite).

    The directory is first renamed aside (atomic), so a kill at any moment leaves either the whole old run
    or none of it under the name, never its checkpoint beside a new recipe.yaml. Only a dlforge run
    directory (checkpoint/meta.json, the first file a run writes, or recipe.yaml and model.json) is removed:
    `--out ~ --overwrite` is refused.
    """
    if not ((run_dir / META).is_file() or ((run_dir / "recipe.yaml").is_file() and (run_dir / "model.json").is_file())):
        raise DlforgeError(f"{run_dir} is not a dlforge run directory; --overwrite replaces run directories only",
                           where="--out", hint="choose a new or empty --out directory")
    for stale in run_dir.parent.glob(f".{run_dir.name}.*{OLD_SUFFIX}"):  # left by a kill during an earlier removal
        shutil.rmtree(stale, ignore_errors=True)
    aside = run_dir.with_name(f".{run_dir.name}.{os.getpid()}{OLD_SUFFIX}")
    os.replace(run_dir, aside)
    shutil.rmtree(aside)


def _read_meta(run_dir: Path) -> dict:
    path = Path(run_dir) / META
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"checkpoint/meta.json cannot be read ({exc.__class__.__name__})", where=str(path),
                            hint=f"start the run over: `dlforge train RECIPE --out {run_dir} --overwrite`") from None


def _nothing_to_resume(run_dir: Path, meta: dict, progress: bool) -> RunResult | None:
    """A complete run: say so and return its result untouched. A run stopped before its first checkpoint: a clear
    error saying how to start over (its hint once sent the user back to --resume, in a loop). Otherwise None."""
    whole = all((run_dir / name).is_file() for name in RUN_FILES)
    if whole and (meta.get("complete") or not (run_dir / CHECKPOINT_DIR).exists()):
        metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
        if progress:
            print(f"nothing to resume: {run_dir} is complete ({metrics.get('epochs_run')} epoch(s)); "
                  "its model and metrics are unchanged", file=sys.stderr)
        history_path = run_dir / "history.csv"
        history = list(csv.DictReader(io.StringIO(history_path.read_text(encoding="utf-8")))) \
            if history_path.is_file() else []
        return RunResult(run_dir, metrics, history)
    if not run_dir.is_dir():
        raise ArtifactError("no checkpoint to resume from: no such run directory", where=str(run_dir),
                            hint="train one with `dlforge train RECIPE`")
    if not (run_dir / "recipe.yaml").is_file() and not (run_dir / META).is_file() and not _only_temp_files(run_dir):
        raise ArtifactError("no checkpoint to resume from: this is not a dlforge run directory (no recipe.yaml)",
                            where=str(run_dir), hint=f"start a new run with `dlforge train RECIPE --out {run_dir}`")
    if not has_checkpoint(run_dir) and not has_member_checkpoint(run_dir):
        recipe = meta.get("recipe_path") or "RECIPE"
        raise ArtifactError("nothing to resume: the run was stopped before its first checkpoint", where=str(run_dir),
                            hint=f"start it over: `dlforge train {recipe} --out {run_dir} --overwrite`")
    return None


def train(recipe=None, *, out: str | Path | None = None, overrides: list[str] | None = None,
          resume: str | Path | None = None, overwrite: bool = False, callbacks=(), progress: bool = True,
          stop=None) -> RunResult:
    """Train a recipe (path, dict, Recipe or None for the default) and write its run directory.

    metrics.json's `train_seconds` is the training loop only (epochs, validation, checkpoints);
    `prepare_seconds` is what came before it (reading, splitting, encoding, building, one-time imports).

    `stop` (a `dlforge.training.stop.StopRequest`, or any object with `is_set()`) ends training after the
    current step with a checkpoint and TrainingInterrupted; nothing here touches the caller's signal handlers.
    """
    recipe_path = str(recipe) if isinstance(recipe, (str, Path)) else None
    started = time.perf_counter()
    # Inside a data-parallel job (torchrun, Ray Train) every process trains; only the main one (rank 0) writes
    # the run directory and prints. The launchers (workflows/launch.py) resolve --out before the processes start.
    process = distributed.init()
    main = process.is_main
    progress = progress and main
    if process.distributed and out is None and resume is None:
        raise DlforgeError("several processes need the run directory named", where="--out",
                           hint="pass --out DIR (dlforge train --nproc does it for you)")
    if resume is not None:
        run_dir = Path(resume)
        meta = _read_meta(run_dir)
        finished = _nothing_to_resume(run_dir, meta, progress)
        if finished is not None:
            return finished
        removed = clean_temp_files(run_dir) if main else []
        if removed and progress:
            print(f"removed {len(removed)} temp file(s) left by an interrupted write "
                  f"({sum(size for _, size in removed) / 1e6:.1f} MB)", file=sys.stderr)
        recipe = load_recipe(run_dir / "recipe.yaml")
        base_dir = Path(meta.get("base_dir", load_checkpoint_meta(run_dir).get("base_dir", ".")))
    else:
        refuse_data_file(recipe)
        recipe = load_recipe(recipe, overrides)
        run_dir = choose_run_dir(recipe, out, overwrite) if main else Path(out)
        base_dir = recipe_base_dir(recipe)
        meta = {"base_dir": str(base_dir), **({"recipe_path": recipe_path} if recipe_path else {})}
    check_callbacks(recipe)  # a misspelt callback fails before the data is read
    if process.distributed:  # what several processes cannot do is refused before any work (training/distributed.py)
        distributed.check_recipe(recipe, distributed.process_device(process))
        if recipe.training.refit:
            raise DlforgeError("training.refit runs in one process", where="training.refit",
                               hint="drop --nproc for this recipe, or drop training.refit")
    config = recipe.training
    if config.threads:
        torch.set_num_threads(config.threads)
    table = read_table(recipe, base_dir)
    check_sensitive_columns(recipe, table.columns)  # evaluation.sensitive: a typo fails before training
    # The split as `evaluate` re-derives it from the data, for run.json (taken before prepare() changes the table).
    rows = derive_split(recipe, table)
    split = split_record(rows, n_rows=table.n_rows, split_config=recipe.data.split)
    checks = quick_checks(table, inputs=[f.name for f in recipe.inputs], target=recipe.outputs[0].name,
                          target_type=recipe.outputs[0].type, splits=rows)
    prepared = prepare(recipe, table=table)
    if progress:
        _print_data_summary(prepared.report)
        for line in checks["lines"] or ["no duplicates across splits, no leaky column, no single-row class"]:
            print(f"audit: {line}", file=sys.stderr)
        cfg = recipe.data.split
        by = recipe.outputs[0].name if cfg.stratify and recipe.outputs[0].type in ("category", "binary") else None
        print("  " + holdout_note(source=recipe.data.source, test_source=recipe.data.test_source, val=cfg.val,
                                  official=prepared.report["official_split"] and not recipe.data.test_source,
                                  test=cfg.test, seed=cfg.seed, stratify_by=by, rows=prepared.report["rows"]),
              file=sys.stderr)
        notice = precision_notice(config.precision, default_device())
        if notice:
            print(f"warning: {notice}", file=sys.stderr)
    if config.privacy is not None:  # an unreachable budget, a bad delta or a BatchNorm layer: refused before any file
        privacy_plan = plan_for(recipe, prepared)
        if progress:
            print("privacy (DP-SGD):\n  " + "\n  ".join(privacy_plan.lines()[:4]), file=sys.stderr)
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
    if resume is None and main:  # meta.json first: it marks the directory as a run that --overwrite may replace
        write_json(run_dir / META, meta)
    if recipe.training.optimizer.lr == "auto":  # resolved before recipe.yaml is written, so a resume reuses it
        found = range_test_for(recipe, prepared, plot=run_dir / "plots" / "lr_find.svg")
        recipe.training.optimizer.lr = found.suggestion
        meta["lr_find"] = found.as_dict()  # kept for the metrics of a resumed post-training phase
        write_json(run_dir / META, meta)
    if resume is None and main:
        write_text(run_dir / "recipe.yaml", dump_recipe(recipe))
    if main:
        callbacks = (*callbacks, *default_tracking(recipe, run_dir))  # MLflow, when the `track` extra is installed
    signature = prepared.signature()
    splits, fitted = prepared.splits, None
    if config.cross_fit > 1:  # k members, one after another, each with its own checkpoint (training/cross_fit.py)
        load_metric_backend()
        prepare_seconds = time.perf_counter() - started
        fitted = cross_fit(recipe, prepared, run_dir=run_dir, resume=resume is not None, callbacks=callbacks,
                           progress=progress, stop=stop)
        model, trainer, result, cache_report, splits = fitted.model, fitted.trainer, fitted.result, {}, fitted.splits
    else:
        built = build_training(recipe, prepared, run_dir=run_dir, callbacks=callbacks, progress=progress, stop=stop)
        model, trainer, cache_report = built.model, built.trainer, built.cache_report
        state = load_checkpoint(run_dir, recipe=recipe) if resume is not None else None
        load_metric_backend()  # a one-time import of seconds: counted in prepare_seconds, not in the first epoch
        prepare_seconds = time.perf_counter() - started
        result = trainer.fit(state)

    # The post-training phase: its inputs (final weights, history, seconds) are in the finished checkpoint, so
    # a resume redoes it exactly. A stop request is honoured between its writes.
    def checkpoint_stop() -> None:
        if trainer.stop.is_set():
            raise TrainingInterrupted(str(run_dir))

    if trainer.stop_requested():  # under data parallelism agreed by every process: all stop, or none
        raise TrainingInterrupted(str(run_dir))
    # Under data parallelism every process scores its share of the rows and all get the whole split's metrics.
    refitted = None
    if config.refit and fitted is None and len(splits.get("val") or ()):  # training/refit.py
        first_model, val_metrics = trainer.model, trainer.evaluate(splits["val"], detail=True)
        epochs = refit_epochs(result)
        built, refit_result, _ = refit(recipe, prepared, epochs, run_dir=run_dir, progress=progress, stop=stop)
        trainer, refitted = built.trainer, {"epochs": epochs, "train_seconds": round(refit_result.train_seconds, 3),
                                            "rows": len(splits["train"]) + len(splits["val"])}
        metrics = {"val": val_metrics, **({"test": trainer.evaluate(splits["test"], detail=True)}
                                          if "test" in splits else {})}
    else:
        metrics = {part: trainer.evaluate(splits[part], detail=True) for part in ("val", "test") if part in splits}
    model = trainer.release()  # from here rank 0 alone (under FSDP: an ordinary module with the full weights)
    if not main:  # the main process holds the same weights: it writes the run directory
        return RunResult(run_dir, {}, result.history)
    if fitted is not None:  # val: the pooled rows, each scored by the member that held it out
        metrics = {"val": fitted.out_of_fold, **metrics}
    if trainer.compile_seconds is not None:  # part of train_seconds: the first compiled step, compilation included
        metrics["compile_seconds"] = round(trainer.compile_seconds, 3)
    if process.distributed:
        metrics["processes"] = {"world_size": process.world_size, "strategy": config.strategy,
                                "backend": distributed.backend_for(trainer.device),
                                "threads_per_process": torch.get_num_threads()}
    refit_seconds = refitted["train_seconds"] if refitted is not None else 0.0
    metrics.update({"train_seconds": round(result.train_seconds + refit_seconds, 3),
                    "prepare_seconds": round(prepare_seconds, 3),
                    "epochs_run": result.epochs_run,
                    "best_epoch": result.best_epoch, "stopped_early": result.stopped_early,
                    "parameters": count_parameters(model), "data": prepared.report, "audit": checks})
    if fitted is not None:
        metrics["cross_fit"] = {
            "folds": config.cross_fit, "val": "out of fold", "rows": len(splits["train"]),
            "members": [{"fold": i, "seed": (config.seed + i) % 2**63, "epochs_run": r.epochs_run,
                         "best_epoch": r.best_epoch, "stopped_early": r.stopped_early}
                        for i, r in enumerate(fitted.members)]}
    warning = next((w for r in (fitted.members if fitted else [result]) if (w := best_epoch_warning(r, config))), None)
    if warning:
        metrics["warnings"] = [warning]
        if progress:
            print(f"warning: {warning}", file=sys.stderr)
    # Under DP the non-private baselines' scores would be released beside the private model, outside its budget.
    baseline = baseline_for(config.baseline if config.privacy is None else False, splits, signature, seed=config.seed,
                            units=output_scales(prepared), threads=config.threads,
                            say=lambda text: print(text, file=sys.stderr))
    if baseline is not None:
        metrics["baseline"] = baseline
    if isinstance(model, RecommenderModel) and model.ranking:  # the sampled protocol, and the most-popular baseline
        metrics.update(ranking_report(model, recipe, prepared, base_dir=base_dir))
        if refitted is not None:  # the baseline as documented: popularity counted on train only
            metrics["baseline"] = ranking_report(first_model.eval(), recipe, prepared, base_dir=base_dir)["baseline"]
    if refitted is not None:
        metrics["refit"] = {**refitted, "note": "val: the model early-stopped on val; test and the saved model: a "
                                                "fresh one trained on train + val for that many epochs"}
    if cache_report:
        metrics["backbones"] = cache_report
    privacy = trainer.strategy.report() if isinstance(trainer.strategy, StatefulStrategy) else None
    if privacy is not None:
        metrics["privacy"] = {**privacy, **({"validation": VALIDATION_NOTE} if "val" in prepared.splits else {})}
        if progress:
            print(f"privacy: epsilon {privacy['epsilon']:.4g} spent of {privacy['epsilon_budget']:g} "
                  f"(delta {privacy['delta']:g}, {privacy['steps']} steps)", file=sys.stderr)
    if "lr_find" in meta:
        metrics["lr_find"] = meta["lr_find"]
    # Calibration, fairness, mitigation and the worst mistakes (evaluation.*): metrics, model.json's postprocess.
    assessed = assess(recipe, trainer, prepared, table, rows, run_dir)
    metrics.update(assessed.metrics)
    release_feature_cache(model)
    checkpoint_stop()
    save_model(run_dir, recipe, prepared.inputs, prepared.outputs, model.cpu(), postprocess=assessed.postprocess,
               privacy=privacy)
    save_run_json(run_dir, source=recipe.data.source, base_dir=base_dir, split=split)
    write_json(run_dir / "metrics.json", metrics, nonfinite="null")  # an undefined metric (AUC of one class) is null
    write_text(run_dir / "history.csv", _history_csv(result.history))
    checkpoint_stop()
    plots = plot_curves(fitted.members[0].history if fitted else result.history, run_dir / "plots")
    plots += _confusion_plots(metrics.get("test") or metrics.get("val") or {}, signature, run_dir)
    plots += _regression_plots(trainer, prepared, run_dir)
    plots += assessed.plots
    write_report(run_dir, name=recipe.name, metrics=metrics, recipe_yaml=dump_recipe(recipe), plots=plots)
    checkpoint_stop()
    trainer.end_run(run_dir)  # the run directory is complete: callbacks may read, copy or log it
    write_json(run_dir / META, {**meta, "complete": True})  # last: a resume from here on does nothing
    return RunResult(run_dir, metrics, result.history)


def refuse_data_file(recipe) -> None:
    """A data file (or folder) given where a recipe belongs: say --target is missing and list its columns."""
    if not isinstance(recipe, (str, Path)):
        return
    path = Path(recipe)
    if not (path.is_dir() or path.name.lower().endswith(DATA_SUFFIXES) or str(recipe).startswith("builtin:")):
        return
    from dlforge.data.readers import load_table

    try:
        columns = list(load_table(str(recipe), field="DATA").columns)
    except DlforgeError:
        columns = []
    raise missing_target(str(recipe), columns)


def _regression_plots(trainer, prepared, run_dir: Path) -> list[Path]:
    """Predicted vs actual and residuals (in the target's units) for every number output, on test (else val)."""
    part = "test" if "test" in prepared.splits else "val"
    numbers = [n for n, f in prepared.outputs.items() if f.signature()["type"] == "number"]
    if not numbers or part not in prepared.splits:
        return []
    split = prepared.splits[part]
    logits = trainer.predict_logits(split)
    plots = []
    for name in numbers:
        feature = prepared.outputs[name]
        actual = feature.decode(split.y[name].detach().cpu().unsqueeze(-1))
        predicted = feature.decode(logits[name].detach().cpu())
        suffix = "" if len(prepared.outputs) == 1 else f"_{name}"
        plots.append(plot_predicted_vs_actual(actual, predicted, run_dir / "plots" / f"predicted_vs_actual{suffix}.svg",
                                              target=name, split=part))
        plots.append(plot_residuals(actual, predicted, run_dir / "plots" / f"residuals{suffix}.svg",
                                    target=name, split=part))
    return plots


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

    for line in describe_data(report):
        print(line, file=sys.stderr)


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
                                        run_dir / "plots" / f"confusion{suffix}.svg"))
    return plots
