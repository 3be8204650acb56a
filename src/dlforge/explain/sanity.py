"""The model-randomisation test (Adebayo et al. 2018, "Sanity Checks for Saliency Maps"), run beside every map.

A map that explains the model must change when the model's learned weights are destroyed. We re-initialise
the top of the network (every head, the combiner, and the top half of each encoder's parameterised layers;
the embeddings that attributions live on are kept, so the inputs mean the same), recompute the same method on
the same inputs, and take the Spearman rank correlation of the absolute maps per row. A high correlation means
the map shows the input (edges, salient words) more than the model's reasoning: we warn.
Cost: one more attribution pass (the same as the map itself) and one copy of the model's weights.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from dlforge.explain.spaces import Space

FRACTION = 0.5  # of each encoder's parameterised layers re-initialised, from the top
THRESHOLD = 0.5  # rank correlation above which the map is called "barely changed" (Adebayo's failing methods: >0.5)


def _leaves(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """Leaf layers with their own parameters, in forward (registration) order."""
    return [(n, m) for n, m in module.named_modules()
            if any(True for _ in m.parameters(recurse=False)) and hasattr(m, "reset_parameters")]


def randomised(model: nn.Module, spaces: list[Space], *, seed: int = 0, fraction: float = FRACTION) -> tuple[nn.Module, list[str]]:
    """A copy of `model` with its top re-initialised, and the names of the layers that were."""
    copy_ = copy.deepcopy(model)
    kept = {s.module for s in spaces if s.module}
    names = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        targets = [(f"heads.{n}", m) for n, m in _leaves(copy_.heads)]
        targets += [(f"combiner.{n}", m) for n, m in _leaves(copy_.combiner)]
        for enc_name, encoder in copy_.encoders.items():
            leaves = [(f"encoders.{enc_name}.{n}", m) for n, m in _leaves(encoder)]
            leaves = [(n, m) for n, m in leaves if n not in kept]
            top = max(1, round(len(leaves) * fraction)) if leaves else 0
            targets += leaves[len(leaves) - top:]
        for name, module in targets:
            module.reset_parameters()
            names.append(name)
        if isinstance(getattr(copy_.combiner, "adapter", None), nn.Parameter):
            nn.init.normal_(copy_.combiner.adapter)
    copy_.eval()
    return copy_, names


def _ranks(x: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    return rankdata(x, axis=1)  # average ranks for ties (flat backgrounds are many ties)


def _spearman_row(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = _ranks(a[None])[0], _ranks(b[None])[0]
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = float(np.sqrt((ra ** 2).sum() * (rb ** 2).sum()))
    return float((ra * rb).sum() / denom) if denom > 0 else 0.0


def spearman(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman correlation of each row of (N, D) `a` with the same row of `b`, over the positions where either
    map is non-zero: a position both leave at exactly zero (IG's attribution where the input equals the reference,
    a padding token) is zero by construction, whatever the weights, and thousands of such ties would make any two
    maps look alike. 0 where fewer than 3 positions remain or a row is constant."""
    out = np.zeros(len(a))
    for i in range(len(a)):  # rows are few (one per explained input); each has its own set of positions
        keep = (a[i] != 0) | (b[i] != 0)
        if keep.sum() >= 3:
            out[i] = _spearman_row(a[i][keep], b[i][keep])
    return out


def flat_maps(scores: dict[str, np.ndarray], masks: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """Every input's reduced map of one explanation side by side, absolute (N, D): the unit the test ranks.
    Padding positions (mask False) are dropped by zeroing in both maps (they tie and do not move the ranks much)."""
    parts = []
    for name, value in scores.items():
        v = np.abs(value.reshape(value.shape[0], -1))
        if masks and name in masks:
            v = v * masks[name].reshape(v.shape[0], -1)
        parts.append(v)
    return np.concatenate(parts, axis=1)


def verdict(correlations: np.ndarray, method: str, threshold: float = THRESHOLD) -> str | None:
    mean = float(np.mean(correlations))
    if mean < threshold:
        return None
    return (f"sanity check: the {method} map barely changes when the model's top layers are randomised "
            f"(Spearman {mean:.2f} >= {threshold}); it may show the input more than what the model learned "
            f"(Adebayo et al. 2018) - compare with another method")


__all__ = ["THRESHOLD", "flat_maps", "randomised", "spearman", "verdict"]
