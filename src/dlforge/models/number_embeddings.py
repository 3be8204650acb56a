"""Embeddings of number columns (Gorishniy, Rubachev, Babenko 2022, "On Embeddings for Numerical Features in
Tabular Deep Learning"): a scalar becomes a vector before the MLP, which lets the MLP fit the sharp,
irregular functions of one column that trees find easily and a plain MLP smooths over.

- piecewise_linear (PLE, their eq. 1, then Linear → ReLU): the value's position inside each quantile bin
  (0 before it, 1 after it, the fraction inside it; the outer bins extrapolate), bins fitted on train.
- periodic (PLR): sin and cos of learned frequencies (initialised ~ N(0, sigma)), then Linear → ReLU.

Each embeds all columns of its kind at once: one (B, F, T) tensor and an einsum per batch, no loop over
columns. The cost: F·T·dim weights (16 columns × 16 bins × 16 = 4k), and a wider first MLP layer (F·dim inputs).
"""

from __future__ import annotations

import math

import torch
from torch import nn


class _PerColumnLinear(nn.Module):
    """A separate Linear(T → dim) for each of F columns: (B, F, T) → (B, F, dim)."""

    def __init__(self, columns: int, width: int, dim: int):
        super().__init__()
        bound = 1 / math.sqrt(width)
        self.weight = nn.Parameter(torch.empty(columns, width, dim).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(columns, dim).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bft,ftd->bfd", x, self.weight) + self.bias


class PiecewiseLinearEmbedding(nn.Module):
    """`edges`: per column, its sorted bin edges (a column may have fewer bins than another; padded bins stay 0)."""

    def __init__(self, edges: list[list[float]], dim: int):
        super().__init__()
        bins = max(len(e) - 1 for e in edges)
        left = torch.zeros(len(edges), bins)
        width = torch.ones(len(edges), bins)
        mask = torch.zeros(len(edges), bins)
        first = torch.zeros(len(edges), bins, dtype=torch.bool)
        last = torch.zeros(len(edges), bins, dtype=torch.bool)
        for i, e in enumerate(edges):
            e = torch.tensor(e, dtype=torch.float32)
            n = len(e) - 1
            left[i, :n], width[i, :n], mask[i, :n] = e[:-1], (e[1:] - e[:-1]).clamp(min=1e-6), 1.0
            first[i, 0], last[i, n - 1] = True, True
        for name, value in (("left", left), ("width", width), ("mask", mask), ("first", first), ("last", last)):
            self.register_buffer(name, value)
        self.linear = _PerColumnLinear(len(edges), bins, dim)
        self.output_dim = len(edges) * dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, F) → (B, F·dim)
        ratio = (x.unsqueeze(-1) - self.left) / self.width  # (B, F, T)
        # Inner bins clamp to [0, 1]; the first bin may go below 0 and the last above 1 (extrapolation).
        low = torch.where(self.first, ratio, ratio.clamp(min=0.0))
        encoded = torch.where(self.last, low, low.clamp(max=1.0)) * self.mask
        return torch.relu(self.linear(encoded)).flatten(1)


class PeriodicEmbedding(nn.Module):
    def __init__(self, columns: int, frequencies: int, sigma: float, dim: int):
        super().__init__()
        self.frequencies = nn.Parameter(torch.randn(columns, frequencies) * sigma)
        self.linear = _PerColumnLinear(columns, 2 * frequencies, dim)
        self.output_dim = columns * dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, F) → (B, F·dim)
        angle = 2 * math.pi * self.frequencies * x.unsqueeze(-1)  # (B, F, k)
        return torch.relu(self.linear(torch.cat([torch.cos(angle), torch.sin(angle)], dim=-1))).flatten(1)
