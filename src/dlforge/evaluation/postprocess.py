"""What a trained model's post-processing does at predict time: temperature scaling and group thresholds.

Both are JSON in model.json's `postprocess` record (written by `save_model`, covered by its content digest), and
applied here with torch/numpy only, so `predict`, `evaluate` and `serve` agree and none of them imports fairlearn:

    {"temperature": {"<output>": 1.7},
     "thresholds": {"output": "income", "by": ["sex"], "constraint": "demographic_parity", "seed": 0,
                    "groups": {"Female": {"p0": 0.3, "t0": 0.41, "op0": ">", "p1": 0.7, "t1": 0.2, "op1": ">"}, ...}}}

Group thresholds are fairlearn's ThresholdOptimizer (Hardt et al. 2016): a row of group g is positive with
probability q = p0·[score op0 t0] + p1·[score op1 t1]. The draw is a hash of the row's score and `seed` (splitmix64),
so a row gets the same answer alone, in any batch, from predict or from serve, on every call. The group of a row is read from the model's own category inputs (their
vocabulary, so the unknown bucket is a group as in training); a group never seen in validation keeps the
model's plain threshold.
"""

from __future__ import annotations

import numpy as np
import torch

JOIN = " × "


def apply_temperature(logits: dict[str, torch.Tensor], record: dict | None) -> dict[str, torch.Tensor]:
    """Logits divided by each output's fitted temperature (outputs without one are returned unchanged)."""
    temperatures = (record or {}).get("temperature") or {}
    return {name: value / float(temperatures[name]) if name in temperatures else value
            for name, value in logits.items()}


def group_keys(x: dict[str, torch.Tensor], vocabularies: dict[str, list[str]], by: list[str]) -> np.ndarray:
    """Each row's group label (the `by` inputs' vocabulary entries, joined with ' × ') from encoded inputs."""
    parts = [np.asarray(vocabularies[name], dtype=object)[x[name].reshape(-1).cpu().numpy()] for name in by]
    if len(parts) == 1:
        return parts[0]
    return np.array([JOIN.join(row) for row in zip(*parts)], dtype=object)


def _compare(scores: np.ndarray, threshold: float, op: str) -> np.ndarray:
    return scores > threshold if op == ">" else scores < threshold


def positive_rate(scores: np.ndarray, groups: np.ndarray, record: dict, fallback: float) -> np.ndarray:
    """Per row, the probability of predicting positive under the group thresholds (fairlearn's `_pmf_predict`);
    rows of an unseen group get 0/1 from the plain `fallback` threshold."""
    scores = np.asarray(scores, dtype=np.float64)
    q = (scores >= fallback).astype(np.float64)
    for group, row in record["groups"].items():
        mask = groups == group
        if mask.any():
            s = scores[mask]
            q[mask] = row["p0"] * _compare(s, row["t0"], row["op0"]) + row["p1"] * _compare(s, row["t1"], row["op1"])
    return q


def uniform_draws(scores: np.ndarray, seed: int) -> np.ndarray:
    """A number in [0, 1) per row from its score's bits and the seed (splitmix64): deterministic per row, uniform
    over rows, independent of the batch the row arrives in."""
    bits = np.ascontiguousarray(scores, dtype=np.float64).view(np.uint64)
    with np.errstate(over="ignore"):
        z = bits + np.uint64((0x9E3779B97F4A7C15 * (seed + 1)) % 2**64)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(2**53)


def threshold_predictions(scores: np.ndarray, groups: np.ndarray, record: dict, fallback: float) -> np.ndarray:
    """0/1 per row: positive with probability `positive_rate` (the draw: `uniform_draws`)."""
    q = positive_rate(scores, groups, record, fallback)
    return (uniform_draws(scores, int(record.get("seed", 0))) < q).astype(np.int64)


__all__ = ["apply_temperature", "group_keys", "positive_rate", "threshold_predictions", "uniform_draws"]
