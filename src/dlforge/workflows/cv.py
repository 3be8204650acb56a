"""`dlforge cv`: k-fold cross-validation of a recipe (stratified on a category/binary first output).

Every row of the data (an official test split included) lands in exactly one held-out fold. For each
fold the remaining rows are split into train and validation as the recipe says (`data.split.val`,
which early stopping and schedules watch), features are fitted on that fold's training rows only, and
the held-out fold is scored. The result is each metric's mean ± standard deviation over folds and a
CSV with one row per fold.
"""

from __future__ import annotations

import csv
import io
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dlforge.core.errors import DataError
from dlforge.data.split import fold_ids
from dlforge.evaluation.metrics import flatten
from dlforge.core.files import write_json, write_text


@dataclass
class CVResult:
    folds: list[dict]
    summary: dict[str, dict[str, float]]  # metric -> {"mean", "std"}
    out_dir: Path | None

    def line(self, metric: str) -> str:
        s = self.summary[metric]
        return f"{metric} {s['mean']:.4f} ± {s['std']:.4f}"


def cross_validate(recipe=None, *, folds: int = 5, out: str | Path | None = None,
                   overrides: list[str] | None = None, progress: bool = False) -> CVResult:
    """Train the recipe once per fold and score each held-out fold; writes folds.csv and cv.json to `out`."""
    from dlforge.data.prepare import read_table, split_groups, stratify_labels
    from dlforge.recipe.io import load_recipe, recipe_base_dir

    if folds < 2:
        raise DataError(f"cross-validation needs at least 2 folds; got {folds}", where="--folds")
    recipe = load_recipe(recipe, overrides).model_copy(deep=True)  # the caller's Recipe is never changed
    recipe.data.split.test = "official"  # the fold marks the held-out rows as the official test split
    table = read_table(recipe, recipe_base_dir(recipe))
    labels = stratify_labels(recipe, table)
    groups = split_groups(recipe, table)
    if groups is None:
        ids = fold_ids(table.n_rows, labels, folds, recipe.data.split.seed)
    else:  # whole groups are dealt to folds, stratified by each group's most common class
        names, codes = np.unique(groups.astype(str), return_inverse=True)
        majority = None if labels is None else np.array(
            [max(set(labels[codes == g].tolist()), key=labels[codes == g].tolist().count) for g in range(len(names))],
            dtype=object)
        ids = fold_ids(len(names), majority, folds, recipe.data.split.seed)[codes]
    out_dir = Path(out) if out is not None else None
    with tempfile.TemporaryDirectory(prefix="dlforge-cv-") as scratch:  # fold checkpoints when there is no `out`
        rows = [_fold(recipe, table, ids, k, out_dir or Path(scratch), progress) for k in range(folds)]
    metrics = [key for key in rows[0] if key.startswith("test.")]
    summary = {m.removeprefix("test."): {"mean": float(np.mean([r[m] for r in rows])),
                                         "std": float(np.std([r[m] for r in rows], ddof=1))} for m in metrics}
    if out_dir is not None:
        write_text(out_dir / "folds.csv", _csv(rows))
        write_json(out_dir / "cv.json", {"folds": folds, "rows": table.n_rows, "summary": summary,
                                          "stratified": labels is not None}, nonfinite="null")
    return CVResult(rows, summary, out_dir)


def _fold(recipe, table, ids: np.ndarray, k: int, root: Path, progress: bool) -> dict:
    """Train on every fold but `k`, score fold `k`: one row of folds.csv."""
    from dlforge.data.prepare import prepare
    from dlforge.training.setup import build_training

    started = time.perf_counter()
    fold_table = table.take(np.arange(table.n_rows))
    fold_table.split = np.where(ids == k, "test", "train").astype(object)
    prepared = prepare(recipe, table=fold_table)
    # Same training path as `dlforge train`: frozen-backbone cache, gradual unfreezing, batch augmentation.
    trainer = build_training(recipe, prepared, run_dir=root / f"fold_{k}", progress=progress).trainer
    result = trainer.fit()
    scores = flatten(trainer.evaluate(prepared.splits["test"]), "test")
    return {"fold": k, "train_rows": prepared.report["rows"]["train"], "test_rows": prepared.report["rows"]["test"],
            "epochs_run": result.epochs_run, "seconds": round(time.perf_counter() - started, 2), **scores}


def _csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


__all__ = ["CVResult", "cross_validate", "fold_ids"]
