"""`dlforge evaluate`: a trained run's metrics on its own test split, or on another labelled file.

The own test split is re-derived from the data (run.json says where it is and how it was split) and
checked against the rows run.json stored, so a run evaluates without checkpoint/, and a changed file is
an error rather than a score on different rows.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from dlforge.artifact.format import check_split, read_run_json
from dlforge.artifact.predictor import load
from dlforge.core.errors import ArtifactError
from dlforge.data import read_table
from dlforge.data.images.files import is_file_column, resolve_paths
from dlforge.data.prepare import split_groups, stratify_labels
from dlforge.data.split import split_rows
from dlforge.data.table import Table


def load_checkpoint_meta(run_dir: Path) -> dict:
    path = Path(run_dir) / "checkpoint" / "meta.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def derive_split(recipe, table: Table) -> dict[str, np.ndarray]:
    """Row indices of each split of `table` as the recipe's `data.split` makes them (seeded: the same every time)."""
    cfg = recipe.data.split
    return split_rows(table.n_rows, official=table.split, labels=stratify_labels(recipe, table), val=cfg.val,
                      test=cfg.test, seed=cfg.seed, groups=split_groups(recipe, table))


def evaluate(run_dir: str | Path, data: str | Path | None = None, *, runtime: str | None = None) -> dict:
    """Metrics of a trained run on its own test split, or on another labelled file; `runtime` torch | onnx."""
    predictor = load(run_dir, runtime=runtime)
    if data is None:
        record = read_run_json(Path(run_dir))
        table = read_table(predictor.recipe, Path(record["data"]["base_dir"]))
        rows = derive_split(predictor.recipe, table)
        check_split(record, rows, n_rows=table.n_rows, run_dir=Path(run_dir))
        table = table.take(rows["test"] if len(rows["test"]) else rows["val"])
        for name, sig in predictor.signature["inputs"].items():
            # Image paths are relative to the data's folder, as training read them (idempotent on absolute paths;
            # the shared "table -> model inputs" path of the runtime seam may take this over).
            if sig["type"] in ("image", "audio") and is_file_column(table.columns[name]):
                table.columns[name] = resolve_paths(table.columns[name], table.root)
    else:
        from dlforge.data.readers import ReadOptions, load_table

        # Columns are checked (and image paths resolved against the file's folder) by Predictor.evaluate,
        # through the same path as `predict --data`; cells are read as training read them (data.na_values).
        table = load_table(str(data), field="--data", options=ReadOptions.of(predictor.recipe.data))
    if table.n_rows == 0:
        raise ArtifactError("no rows to evaluate on", where=str(data or run_dir))
    return predictor.evaluate(table)
