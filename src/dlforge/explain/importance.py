"""Global importance by permutation (Breiman 2001; scikit-learn's `permutation_importance`) on the run's test split.

Each input in turn is shuffled across the test rows, breaking its link to the target while keeping its
distribution; the drop in score is its importance. Whole inputs are permuted (a category column, a text,
an image), so the figures compare columns and modalities alike. Scores: accuracy for category/binary/
multilabel outputs (higher is better), the head's loss for numbers (drop = loss increase, sign flipped).
Cost: inputs x repeats forward passes over the test split (adult: 14 x 5 passes over 16,281 rows).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from dlforge.artifact.format import check_split, read_run_json
from dlforge.artifact.inputs import from_table
from dlforge.artifact.predictor import Predictor, load
from dlforge.core.errors import ArtifactError
from dlforge.data.prepare import encode, read_table, stratify_labels
from dlforge.data.split import split_rows
from dlforge.data.table import Table


def held_out_table(predictor: Predictor) -> Table:
    """The run's own test rows (the validation rows when it had no test split), re-derived and checked against
    the rows run.json recorded, as `dlforge evaluate` does."""
    run_dir = Path(predictor.run_dir)
    record = read_run_json(run_dir)
    table = read_table(predictor.recipe, Path(record["data"]["base_dir"]))
    cfg = predictor.recipe.data.split
    rows = split_rows(table.n_rows, official=table.split, labels=stratify_labels(predictor.recipe, table),
                      val=cfg.val, test=cfg.test, seed=cfg.seed)
    check_split(record, rows, n_rows=table.n_rows, run_dir=run_dir)
    chosen = rows["test"] if len(rows["test"]) else rows["val"]
    if not len(chosen):
        raise ArtifactError("the run has neither test nor validation rows to permute", where=str(run_dir),
                            hint="pass a labelled file: dlforge explain RUN --global --data test.csv")
    return table.take(chosen)


def _score(predictor: Predictor, output: str, logits: torch.Tensor, y: torch.Tensor) -> float:
    kind = predictor.signature["outputs"][output]["type"]
    if kind == "category":
        return float((logits.argmax(-1) == y).float().mean())
    if kind in ("binary", "multilabel"):
        threshold = predictor.signature["outputs"][output].get("threshold", 0.5)
        predicted = torch.sigmoid(logits.float()) >= threshold
        return float((predicted.squeeze(-1) == (y > 0.5)).float().mean())
    return -float(predictor.model.heads[output].loss(logits, y))


def permutation_importance(run, *, data: Table | None = None, output: str | None = None, repeats: int = 5,
                           seed: int = 0, max_rows: int | None = 20000) -> dict:
    """{input: {"mean", "std"}} score drops when that input is shuffled, on the test split (or `data`).

    `max_rows` caps the rows used (a seeded sample) so a large test split stays a few seconds per input.
    """
    predictor = run if isinstance(run, Predictor) else load(run)
    output = output or predictor.output_names[0]
    table = held_out_table(predictor) if data is None else data
    table = from_table(table, predictor.signature["inputs"], {output: predictor.signature["outputs"][output]})
    rng = np.random.default_rng(seed)
    if max_rows and table.n_rows > max_rows:
        table = table.take(np.sort(rng.choice(table.n_rows, max_rows, replace=False)))
    if table.n_rows < 2:
        raise ArtifactError(f"permutation needs at least 2 labelled rows; got {table.n_rows}", where=table.origin)
    encoded = encode(table, predictor.inputs, {output: predictor.outputs[output]})
    x, y = encoded.x, encoded.y[output]
    base = _score(predictor, output, predictor.logits(x)[output], y)
    generator = torch.Generator().manual_seed(seed)
    result = {}
    for name in x:
        drops = []
        for _ in range(repeats):
            order = torch.randperm(len(y), generator=generator)
            shuffled = {**x, name: x[name][order]}
            drops.append(base - _score(predictor, output, predictor.logits(shuffled)[output], y))
        result[name] = {"mean": float(np.mean(drops)), "std": float(np.std(drops))}
    ranking = sorted(result, key=lambda n: -result[n]["mean"])
    metric = "accuracy" if predictor.signature["outputs"][output]["type"] != "number" else "negative loss"
    return {"output": output, "metric": metric, "score": base, "rows": table.n_rows, "repeats": repeats,
            "importance": {n: result[n] for n in ranking}}


def write_importance(found: dict, out: Path) -> list[Path]:
    import csv
    import json

    out.mkdir(parents=True, exist_ok=True)
    path = out / "importance.csv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["input", f"{found['metric']}_drop_mean", f"{found['metric']}_drop_std"])
        for name, v in found["importance"].items():
            writer.writerow([name, f"{v['mean']:.6g}", f"{v['std']:.6g}"])
    summary = out / "importance.json"
    summary.write_text(json.dumps(found, indent=2) + "\n")
    return [path, summary]


__all__ = ["permutation_importance", "held_out_table", "write_importance"]
