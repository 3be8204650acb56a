"""`dlforge evaluate`: a trained run's metrics on its own test split, or on another labelled file."""

from __future__ import annotations

import json
from pathlib import Path

from dlforge.artifact.predictor import load
from dlforge.core.errors import ArtifactError
from dlforge.data import read_table
from dlforge.data.prepare import stratify_labels


def load_checkpoint_meta(run_dir: Path) -> dict:
    path = Path(run_dir) / "checkpoint" / "meta.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def evaluate(run_dir: str | Path, data: str | Path | None = None) -> dict:
    """Metrics of a trained run on its own test split, or on another labelled file."""
    predictor = load(run_dir)
    if data is None:
        recipe = predictor.recipe
        base = Path(load_checkpoint_meta(Path(run_dir)).get("base_dir", "."))
        table = read_table(recipe, base)
        from dlforge.data.split import split_rows

        cfg = recipe.data.split
        rows = split_rows(table.n_rows, official=table.split, labels=stratify_labels(recipe, table), val=cfg.val,
                          test=cfg.test, seed=cfg.seed)
        table = table.take(rows["test"] if len(rows["test"]) else rows["val"])
    else:
        from dlforge.data.readers import load_table

        # Columns are checked (and image paths resolved against the file's folder) by Predictor.evaluate,
        # through the same path as `predict --data`.
        table = load_table(str(data), field="--data")
    if table.n_rows == 0:
        raise ArtifactError("no rows to evaluate on", where=str(data or run_dir))
    return predictor.evaluate(table)
