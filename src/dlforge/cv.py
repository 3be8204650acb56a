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
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dlforge.errors import DataError
from dlforge.evaluate.metrics import flatten
from dlforge.io_utils import write_json, write_text


@dataclass
class CVResult:
    folds: list[dict]
    summary: dict[str, dict[str, float]]  # metric -> {"mean", "std"}
    out_dir: Path | None

    def line(self, metric: str) -> str:
        s = self.summary[metric]
        return f"{metric} {s['mean']:.4f} ± {s['std']:.4f}"


def fold_ids(n_rows: int, labels: np.ndarray | None, folds: int, seed: int) -> np.ndarray:
    """The held-out fold of each row; stratified when labels are given."""
    from sklearn.model_selection import KFold, StratifiedKFold

    if folds > n_rows:
        raise DataError(f"{folds} folds need at least {folds} rows; the data has {n_rows}", where="--folds")
    ids = np.empty(n_rows, dtype=np.int64)
    if labels is not None:
        counts = {v: int((labels == v).sum()) for v in set(labels.tolist())}
        rare = {str(k): c for k, c in counts.items() if c < folds}
        if rare:
            raise DataError(f"class(es) {dict(list(rare.items())[:5])} have fewer rows than the {folds} folds",
                            where="--folds", hint=f"use --folds {max(2, min(counts.values()))} or fewer, or more data")
        splitter = StratifiedKFold(folds, shuffle=True, random_state=seed).split(np.zeros(n_rows), labels)
    else:
        splitter = KFold(folds, shuffle=True, random_state=seed).split(np.zeros(n_rows))
    for k, (_, held_out) in enumerate(splitter):
        ids[held_out] = k
    return ids


def cross_validate(recipe=None, *, folds: int = 5, out: str | Path | None = None,
                   overrides: list[str] | None = None, progress: bool = False) -> CVResult:
    """Train the recipe once per fold and score each held-out fold; writes folds.csv and cv.json to `out`."""
    from dlforge.data.prepare import _stratify_labels, prepare, read_table
    from dlforge.models import build_model
    from dlforge.recipe_io import load_recipe, recipe_base_dir
    from dlforge.run import _attach_loss_weights, _seed_everything
    from dlforge.train import Trainer

    if folds < 2:
        raise DataError(f"cross-validation needs at least 2 folds; got {folds}", where="--folds")
    recipe = load_recipe(recipe, overrides)
    recipe.data.split.test = "official"  # the fold marks the held-out rows as the official test split
    table = read_table(recipe, recipe_base_dir(recipe))
    labels = _stratify_labels(recipe, table)
    ids = fold_ids(table.n_rows, labels, folds, recipe.data.split.seed)
    out_dir = Path(out) if out is not None else None
    rows: list[dict] = []
    for k in range(folds):
        started = time.perf_counter()
        fold_table = table.take(np.arange(table.n_rows))
        fold_table.split = np.where(ids == k, "test", "train").astype(object)
        prepared = prepare(recipe, table=fold_table)
        _seed_everything(recipe.training.seed)
        signature = prepared.signature()
        model = build_model(recipe, signature)
        _attach_loss_weights(model, prepared)
        scales = {n: f.scale_ for n, f in prepared.outputs.items() if signature["outputs"][n]["type"] == "number"}
        run_dir = (out_dir / f"fold_{k}") if out_dir is not None else Path(_tmpdir()) / f"fold_{k}"
        # Same training path as `dlforge train`: frozen-backbone cache, gradual unfreezing, batch augmentation.
        from dlforge.data.augment import build_augmenter
        from dlforge.train.feature_cache import apply_feature_cache
        from dlforge.train.unfreeze import GradualUnfreeze

        apply_feature_cache(recipe, model, prepared.splits)
        unfreeze = GradualUnfreeze(model)
        trainer = Trainer(recipe, model, prepared.splits["train"], prepared.splits.get("val"), signature,
                          run_dir=run_dir, progress=progress, scales=scales, callbacks=[unfreeze] if unfreeze else [],
                          augment=build_augmenter(recipe, prepared.inputs))
        result = trainer.fit()
        scores = flatten(trainer.evaluate(prepared.splits["test"]), "test")
        rows.append({"fold": k, "train_rows": prepared.report["rows"]["train"],
                     "test_rows": prepared.report["rows"]["test"], "epochs_run": result.epochs_run,
                     "seconds": round(time.perf_counter() - started, 2), **scores})
    metrics = [key for key in rows[0] if key.startswith("test.")]
    summary = {m.removeprefix("test."): {"mean": float(np.mean([r[m] for r in rows])),
                                         "std": float(np.std([r[m] for r in rows], ddof=1))} for m in metrics}
    if out_dir is not None:
        write_text(out_dir / "folds.csv", _csv(rows))
        write_json(out_dir / "cv.json", {"folds": folds, "rows": table.n_rows, "summary": summary,
                                          "stratified": labels is not None})
    return CVResult(rows, summary, out_dir)


def _tmpdir() -> str:
    import tempfile

    return tempfile.mkdtemp(prefix="dlforge-cv-")


def _csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


__all__ = ["CVResult", "cross_validate", "fold_ids"]
