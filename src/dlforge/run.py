"""The lifecycle of one run: recipe → data → model → train → evaluate → run directory.

`train()` is what `dlforge train` calls; `evaluate()` and `plan()` back `dlforge evaluate` and
`dlforge recipe check`.
"""

from __future__ import annotations

import csv
import io
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dlforge.artifact import load, save_model
from dlforge.data import prepare, read_table
from dlforge.data.prepare import Encoded
from dlforge.data.augment import build_augmenter
from dlforge.errors import ArtifactError, DlforgeError
from dlforge.io_utils import write_json, write_text
from dlforge.models import build_model, count_parameters
from dlforge.recipe_io import dump_recipe, load_recipe, recipe_base_dir
from dlforge.report import plot_confusion, plot_curves, write_report
from dlforge.train import Trainer
from dlforge.train.trainer import pick_device
from dlforge.train.checkpoint import has_checkpoint, load_checkpoint
from dlforge.train.feature_cache import apply_feature_cache, cacheable, release_feature_cache
from dlforge.train.precision import precision_notice
from dlforge.train.sampling import describe as describe_batching, length_inputs
from dlforge.train.lr_find import LRFindResult, plot_range_test, range_test
from dlforge.train.unfreeze import GradualUnfreeze


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


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def train(recipe=None, *, out: str | Path | None = None, overrides: list[str] | None = None,
          resume: str | Path | None = None, overwrite: bool = False, callbacks=(), progress: bool = True) -> RunResult:
    """Train a recipe (path, dict, Recipe or None for the default) and write its run directory."""
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
    config = recipe.training
    if config.threads:
        torch.set_num_threads(config.threads)
    prepared = prepare(recipe, base_dir=base_dir)
    if progress:
        _print_data_summary(prepared.report)
        notice = precision_notice(config.precision, pick_device())
        if notice:
            print(f"warning: {notice}", file=sys.stderr)
    run_dir.mkdir(parents=True, exist_ok=True)
    found = None
    if recipe.training.optimizer.lr == "auto":  # resolved before recipe.yaml is written, so a resume reuses it
        found = _range_test(recipe, prepared, plot=run_dir / "plots" / "lr_find.png")
        recipe.training.optimizer.lr = found.suggestion
    if resume is None:
        write_text(run_dir / "recipe.yaml", dump_recipe(recipe))
        write_json(run_dir / "checkpoint" / "meta.json", {"base_dir": str(base_dir)})
    _seed_everything(config.seed)
    signature = prepared.signature()
    model = build_model(recipe, signature)
    _attach_loss_weights(model, prepared)
    scales = {n: f.scale_ for n, f in prepared.outputs.items() if signature["outputs"][n]["type"] == "number"}
    cache_report = apply_feature_cache(recipe, model, prepared.splits)  # frozen backbone: embed once
    unfreeze = GradualUnfreeze(model)
    trainer = Trainer(recipe, model, prepared.splits["train"], prepared.splits.get("val"), signature, run_dir=run_dir,
                      callbacks=[*callbacks, *([unfreeze] if unfreeze else [])], progress=progress, scales=scales,
                      augment=build_augmenter(recipe, prepared.inputs))
    state = load_checkpoint(run_dir) if resume is not None else None
    result = trainer.fit(state)

    metrics = {part: trainer.evaluate(prepared.splits[part], detail=True) for part in ("val", "test")
               if part in prepared.splits}
    metrics.update({"train_seconds": round(result.train_seconds, 3), "epochs_run": result.epochs_run,
                    "best_epoch": result.best_epoch, "stopped_early": result.stopped_early,
                    "parameters": count_parameters(model), "data": prepared.report})
    if cache_report:
        metrics["backbones"] = cache_report
    if found is not None:
        metrics["lr_find"] = found.as_dict()
    release_feature_cache(model)
    save_model(run_dir, recipe, prepared.inputs, prepared.outputs, model.cpu())
    write_json(run_dir / "metrics.json", metrics)
    write_text(run_dir / "history.csv", _history_csv(result.history))
    plots = plot_curves(result.history, run_dir / "plots")
    plots += _confusion_plots(metrics.get("test") or metrics.get("val") or {}, signature, run_dir)
    write_report(run_dir, name=recipe.name, metrics=metrics, recipe_yaml=dump_recipe(recipe), plots=plots)
    return RunResult(run_dir, metrics, result.history)


def _print_data_summary(report: dict) -> None:
    """Say what the data became, including every value a policy changed: nothing is altered silently."""

    rows = ", ".join(f"{part} {n}" for part, n in report["rows"].items())
    print(f"data: {report['source']}: {rows}" + (" (official test split)" if report["official_split"] else ""),
          file=sys.stderr)
    for column, counts in report["policies"].items():
        for policy, n in counts.items():
            print(f"  {column}: {n} value(s) {policy.replace('_', ' ')}", file=sys.stderr)


def _range_test(recipe, prepared, *, plot: Path | None, start_lr: float = 1e-7, end_lr: float = 10.0,
                steps: int = 200) -> LRFindResult:
    """The LR range test on a throw-away model (same data, augmentation and frozen-feature cache as training)."""
    import tempfile

    probe = recipe.model_copy(deep=True)
    if probe.training.optimizer.lr == "auto":
        probe.training.optimizer.lr = 1.0  # only the parameter groups' ratios matter; the test sets the rates
    probe.training.early_stopping = None
    _seed_everything(probe.training.seed)
    model = build_model(probe, prepared.signature())
    _attach_loss_weights(model, prepared)
    train_split = Encoded(dict(prepared.splits["train"].x), dict(prepared.splits["train"].y))
    apply_feature_cache(probe, model, {"train": train_split})
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(probe, model, train_split, None, prepared.signature(), run_dir=Path(tmp), progress=False,
                          augment=build_augmenter(probe, prepared.inputs))
        result = range_test(trainer, start_lr=start_lr, end_lr=end_lr, steps=steps)
    if plot is not None:
        plot_range_test(result, plot)
    return result


def lr_find(recipe=None, *, overrides: list[str] | None = None, plot: str | Path | None = "lr_find.png",
            start_lr: float = 1e-7, end_lr: float = 10.0, steps: int = 200) -> LRFindResult:
    """Learning-rate range test for a recipe: returns the smoothed curve and a suggested rate, and saves the plot."""
    recipe = load_recipe(recipe, overrides)
    if recipe.training.threads:
        torch.set_num_threads(recipe.training.threads)
    prepared = prepare(recipe, base_dir=recipe_base_dir(recipe))
    return _range_test(recipe, prepared, plot=Path(plot) if plot else None, start_lr=start_lr, end_lr=end_lr,
                       steps=steps)


def load_checkpoint_meta(run_dir: Path) -> dict:
    import json

    path = Path(run_dir) / "checkpoint" / "meta.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _attach_loss_weights(model, prepared) -> None:
    """Class weights and positive weights depend on training label counts, so they are set after data prep."""
    train_y = prepared.splits["train"].y
    for name, feature in prepared.outputs.items():
        weight = None
        if hasattr(feature, "class_weights"):
            weight = feature.class_weights(train_y[name])
        elif hasattr(feature, "pos_weight"):
            weight = feature.pos_weight(train_y[name])
        model.heads[name].class_weight = weight


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


def evaluate(run_dir: str | Path, data: str | Path | None = None) -> dict:
    """Metrics of a trained run on its own test split, or on another labelled file."""
    predictor = load(run_dir)
    if data is None:
        recipe = predictor.recipe
        base = Path(load_checkpoint_meta(Path(run_dir)).get("base_dir", "."))
        table = read_table(recipe, base)
        from dlforge.data.prepare import _stratify_labels
        from dlforge.data.split import split_rows

        cfg = recipe.data.split
        rows = split_rows(table.n_rows, official=table.split, labels=_stratify_labels(recipe, table), val=cfg.val,
                          test=cfg.test, seed=cfg.seed)
        table = table.take(rows["test"] if len(rows["test"]) else rows["val"])
    else:
        from dlforge.data.sources import load_table

        table = load_table(str(data), field="--data")
        for name in [*predictor.inputs, *predictor.outputs]:
            table.column(name, field_path=f"the model's input/output '{name}'")
    if table.n_rows == 0:
        raise ArtifactError("no rows to evaluate on", where=str(data or run_dir))
    return predictor.evaluate(table)


def plan(recipe=None, overrides: list[str] | None = None, *, with_data: bool = True) -> dict:
    """What training would do, without training: the resolved recipe, features, parameters and steps."""
    recipe = load_recipe(recipe, overrides)
    info: dict = {"recipe": recipe.model_dump(mode="json")}
    if not with_data:
        return info
    prepared = prepare(recipe, base_dir=recipe_base_dir(recipe))
    torch.manual_seed(recipe.training.seed)
    model = build_model(recipe, prepared.signature())
    n_train = len(prepared.splits["train"])
    batch = n_train if recipe.training.batch_size == "full" else min(recipe.training.batch_size, n_train)
    steps = -(-n_train // batch)
    info.update({"rows": prepared.report["rows"], "signature": prepared.signature(), "parameters": count_parameters(model),
                 "steps_per_epoch": steps, "total_steps": steps * recipe.training.epochs,
                 "policies": prepared.report["policies"], "model": str(model),
                 "backbones": cacheable(recipe, model)})
    batched_by = length_inputs(recipe, model, prepared.signature(),
                               has_tokens=lambda name: info["backbones"].get(name) != "cached")
    info["batches"] = describe_batching(batched_by, model)
    info["notices"] = [n for n in [precision_notice(recipe.training.precision, pick_device())] if n]
    return info
