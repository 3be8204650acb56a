"""Rows of a run's own splits, re-derived as training made them, for the passes that need real data:
the parity check of an export (test rows), calibration of int8 (training rows), per-layer decisions (validation
rows, else training rows not used for calibration). Scoring them with a runtime's logits: `score`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from dlforge.artifact.format import check_split, read_run_json
from dlforge.artifact.inputs import from_table
from dlforge.core.errors import ArtifactError
from dlforge.data.images.files import is_file_column, resolve_paths
from dlforge.data.prepare import encode, read_table, stratify_labels
from dlforge.data.split import split_rows
from dlforge.data.table import Table

# The main metric per output type: (name in compute_metrics' result, +1 when higher is better).
MAIN_METRIC = {"category": ("accuracy", 1), "binary": ("accuracy", 1), "multilabel": ("micro_f1", 1),
               "number": ("mae", -1)}


def run_splits(predictor) -> tuple[Table, dict[str, np.ndarray]]:
    """The run's data and the row indices of each split, checked against run.json (a changed file is an error)."""
    record = read_run_json(predictor.run_dir)
    table = read_table(predictor.recipe, Path(record["data"]["base_dir"]))
    cfg = predictor.recipe.data.split
    rows = split_rows(table.n_rows, official=table.split, labels=stratify_labels(predictor.recipe, table),
                      val=cfg.val, test=cfg.test, seed=cfg.seed)
    check_split(record, rows, n_rows=table.n_rows, run_dir=predictor.run_dir)
    return table, rows


def take(predictor, table: Table, rows: np.ndarray) -> Table:
    """Rows of the run's data as model inputs and targets (image paths resolved against the data's folder)."""
    part = table.take(rows)
    for name, sig in predictor.signature["inputs"].items():
        if sig["type"] == "image" and is_file_column(part.columns[name]):
            part.columns[name] = resolve_paths(part.columns[name], part.root)
    return from_table(part, predictor.signature["inputs"], predictor.signature["outputs"])


def sample(rows: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """At most `n` of `rows`, spread over all of them (seeded), in their order."""
    if len(rows) <= n:
        return np.asarray(rows)
    pick = np.random.default_rng(seed).choice(len(rows), size=n, replace=False)
    return np.asarray(rows)[np.sort(pick)]


def evaluation_rows(predictor, n: int) -> tuple[str, Table]:
    """Up to `n` test rows (validation rows when the run has no test split)."""
    table, rows = run_splits(predictor)
    part = "test" if len(rows.get("test", ())) else "val"
    if not len(rows.get(part, ())):
        raise ArtifactError("the run has neither test nor validation rows to check the export on",
                            where=str(predictor.run_dir))
    return part, take(predictor, table, sample(rows[part], n))


def encode_rows(predictor, table: Table, *, scaled: bool = True):
    """(x, y) of `table` with the predictor's features; `scaled=False` leaves image pixels 0..255 (for a graph
    that scales them itself)."""
    images = [f for f in predictor.inputs.values() if hasattr(f, "scale_in_graph")]
    previous = [f.scale_in_graph for f in images]
    try:
        for f in images:
            f.scale_in_graph = not scaled
        encoded = encode(table, predictor.inputs, predictor.outputs)
    finally:
        for f, was in zip(images, previous):
            f.scale_in_graph = was
    x = {k: (v if isinstance(v, torch.Tensor) else v[np.arange(len(v))]) for k, v in encoded.x.items()}
    return x, encoded.y


def score(predictor, logits: dict[str, torch.Tensor], y: dict[str, torch.Tensor]) -> dict:
    """Metrics of `logits` against targets `y`, as Predictor.evaluate computes them."""
    from dlforge.evaluation.metrics import compute_metrics

    scales = {n: f.to_units for n, f in predictor.outputs.items() if predictor.labels(n) is None}
    return compute_metrics(predictor.model, logits, y, predictor.signature, scales=scales)


def main_metric(predictor, metrics: dict) -> tuple[str, float, int]:
    """(name, value, direction) of the run's main metric: the first output's accuracy, micro F1 or MAE."""
    first = predictor.output_names[0]
    name, direction = MAIN_METRIC.get(predictor.signature["outputs"][first]["type"], ("loss", -1))
    values = metrics if len(predictor.output_names) == 1 else metrics[first]
    label = name if len(predictor.output_names) == 1 else f"{first}.{name}"
    return label, float(values[name]), direction


__all__ = ["MAIN_METRIC", "encode_rows", "evaluation_rows", "main_metric", "run_splits", "sample", "score", "take"]
