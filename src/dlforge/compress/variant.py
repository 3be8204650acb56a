"""What every torch-side compression pass shares: a run's data read back, a short fine-tune on it, a variant written.

- `RunData.load(run_dir)`: the trained run (its Predictor) and its data, re-read from where run.json says and
  re-split as training split it (checked against run.json's row digests, so a changed file is an error, not a
  fine-tune on other rows);
- `finetune`: the run's own recipe and training stack (`build_training`: same loss weights, augmentation,
  strategy, callbacks seam), a few epochs at a lower learning rate, on the model given instead of a fresh one;
- `write_variant`: a complete run directory (model.json, model.safetensors, run.json, recipe.yaml, metrics.json,
  compress.json) that `evaluate`, `predict`, `serve` and `dlforge.load()` accept, listed in its parent's run.json.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from dlforge.artifact.format import RUN_JSON, check_split, read_run_json, save_model
from dlforge.artifact.predictor import Predictor
from dlforge.core.errors import DlforgeError
from dlforge.core.files import write_json, write_text
from dlforge.data.images.files import is_file_column, resolve_paths
from dlforge.data.prepare import Prepared, prepare, read_table, stratify_labels
from dlforge.data.split import split_rows
from dlforge.data.table import Table
from dlforge.recipe.io import dump_recipe, validate
from dlforge.training.feature_cache import release_feature_cache
from dlforge.training.setup import attach_loss_weights, build_training

VARIANTS = "variants"
# Fine-tunes start from trained weights: the recipe's peak learning rate would undo much of them.
FINETUNE_LR_SCALE = 0.1


@dataclass
class RunData:
    """A trained run with its data: the Predictor, the table as training read it, and its split rows."""

    run_dir: Path
    predictor: Predictor
    table: Table
    rows: dict[str, np.ndarray]
    record: dict  # run.json

    @classmethod
    def load(cls, run_dir: str | Path) -> RunData:
        run_dir = Path(run_dir)
        predictor = Predictor(run_dir)  # a run without weights or with a damaged model.json fails here, clearly
        record = read_run_json(run_dir)
        recipe = predictor.recipe
        table = read_table(recipe, Path(record["data"]["base_dir"]))
        cfg = recipe.data.split
        rows = split_rows(table.n_rows, official=table.split, labels=stratify_labels(recipe, table), val=cfg.val,
                          test=cfg.test, seed=cfg.seed)
        check_split(record, rows, n_rows=table.n_rows, run_dir=run_dir)
        return cls(run_dir, predictor, table, rows, record)

    @property
    def recipe(self):
        return self.predictor.recipe

    @cached_property
    def prepared(self) -> Prepared:
        """The encoded splits, as training encoded them (the features refit on the same train rows)."""
        return prepare(self.recipe, table=self.table)

    def test_table(self) -> Table:
        """The rows `dlforge evaluate` scores: the test split (else validation), image paths resolved."""
        return self.part_table("test" if len(self.rows["test"]) else "val")

    def part_table(self, part: str) -> Table:
        """The rows of split `part` (train | val | test) in the split's order, image paths resolved."""
        table = self.table.take(self.rows[part])
        for name, sig in self.predictor.signature["inputs"].items():
            if sig["type"] == "image" and is_file_column(table.columns[name]):
                table.columns[name] = resolve_paths(table.columns[name], table.root)
        return table


def finetune_recipe(recipe, *, epochs: int, lr_scale: float = FINETUNE_LR_SCALE):
    """The run's recipe for a fine-tune: `epochs` epochs at `lr_scale` times its learning rate, no callbacks
    (a logger would start a new experiment per fine-tune), no early stopping (too few epochs to judge)."""
    data = recipe.model_dump(mode="json")
    training = data["training"]
    lr = training["optimizer"].get("lr")
    training["optimizer"]["lr"] = (lr if isinstance(lr, (int, float)) else 1e-3) * lr_scale
    training.update(epochs=epochs, callbacks=[], early_stopping=None, checkpoint_every_steps=None)
    return validate(data)


def finetune(model: torch.nn.Module, data: RunData, *, epochs: int, lr_scale: float = FINETUNE_LR_SCALE,
             loss_hooks=(), model_transforms=(), progress: bool = False) -> torch.nn.Module:
    """Train `model` (not a fresh one) `epochs` more epochs on the run's training split, through `build_training`."""
    if epochs <= 0:
        return model
    recipe = finetune_recipe(data.recipe, epochs=epochs, lr_scale=lr_scale)
    attach_loss_weights(model, data.prepared)
    with tempfile.TemporaryDirectory(prefix="dlforge-finetune-") as work:  # its checkpoints are thrown away
        built = build_training(recipe, data.prepared, run_dir=Path(work), progress=progress,
                               model_transforms=(lambda _fresh: model, *model_transforms), loss_hooks=loss_hooks)
        built.trainer.fit()
        release_feature_cache(built.model)
        tuned = built.model
    return tuned.cpu().eval()


def variant_dir(run_dir: Path, name: str, out: Path | None = None) -> Path:
    """Where a variant goes (`RUN/variants/<name>/` unless `out`); an existing one is replaced only if it is a variant."""
    path = Path(out) if out is not None else Path(run_dir) / VARIANTS / name
    if path.exists() and any(path.iterdir()):
        if not (path / "compress.json").is_file():
            raise DlforgeError(f"{path} exists and is not a dlforge variant", where="--out",
                               hint="choose a new or empty --out directory")
        shutil.rmtree(path)
    return path


def write_variant(data: RunData, path: Path, model: torch.nn.Module, *, kind: str, details: dict,
                  recipe=None, inputs=None, outputs=None, metrics: dict | None = None, register: bool = True) -> Path:
    """Write `model` as a complete run directory at `path` and list it in the parent's run.json `variants`.

    `recipe`/`inputs`/`outputs` default to the parent's (a pruned model keeps its features; a distilled student
    brings its own). metrics.json holds `metrics` when given, else the test-split metrics of the saved variant
    loaded back (which also proves it loads). `register=False` leaves the parent's run.json alone.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    recipe = recipe or data.recipe
    save_model(path, recipe, inputs or data.predictor.inputs, outputs or data.predictor.outputs, model.cpu().eval())
    record = {k: v for k, v in data.record.items() if k != "variants"}
    write_json(path / RUN_JSON, {**record, "variants": [], "variant_of": str(Path(data.run_dir).resolve())})
    write_text(path / "recipe.yaml", dump_recipe(recipe))
    if metrics is None:
        test = Predictor(path).evaluate(data.test_table())
        metrics = {"test" if len(data.rows["test"]) else "val": test}
    write_json(path / "metrics.json", metrics, nonfinite="null")
    write_json(path / "compress.json", {"pass": kind, "source": str(Path(data.run_dir).resolve()), **details})
    if register:  # the search's trial candidates are not listed (most are deleted); what it keeps is
        add_variant(data.run_dir, name=path.name, path=path, kind=kind)
    return path


def add_variant(run_dir: Path, *, name: str, path: Path, kind: str) -> None:
    """Record a variant in the parent's run.json (replacing an older entry of the same name)."""
    run_json = Path(run_dir) / RUN_JSON
    if not run_json.is_file():
        return
    record = read_run_json(run_dir)
    try:
        where = str(Path(path).resolve().relative_to(Path(run_dir).resolve()))
    except ValueError:
        where = str(Path(path).resolve())
    variants = [v for v in record.get("variants", []) if isinstance(v, dict) and v.get("name") != name]
    record["variants"] = [*variants, {"name": name, "path": where, "pass": kind}]
    write_json(run_json, record)


def main_metric(metrics: dict, signature: dict) -> tuple[str, float, bool]:
    """(name, value, higher is better) of the metric a compression is judged by: the first output's accuracy
    (category, binary), micro F1 (multilabel) or RMSE (number)."""
    outputs = signature["outputs"]
    first = next(iter(outputs))
    values = metrics if len(outputs) == 1 else metrics.get(first, {})
    for name, higher in (("accuracy", True), ("micro_f1", True), ("rmse", False), ("mae", False)):
        if isinstance(values.get(name), (int, float)):
            return name, float(values[name]), higher
    raise DlforgeError(f"no accuracy, F1 or RMSE among the metrics of output '{first}' to judge a compression by")


__all__ = ["FINETUNE_LR_SCALE", "VARIANTS", "RunData", "add_variant", "finetune", "finetune_recipe", "main_metric",
           "variant_dir", "write_variant"]
