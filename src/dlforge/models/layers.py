"""Dense building blocks shared by encoders and the combiner: Linear (or DropConnect) → norm → act → dropout."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "silu": nn.SiLU}


class DropConnectLinear(nn.Linear):
    """A Linear layer whose weights are dropped (Wan et al. 2013) during training; plain Linear at eval.

    The mask is rescaled by 1/(1-p) so no correction is needed at inference.
    """

    def __init__(self, in_features: int, out_features: int, *, p: float):
        super().__init__(in_features, out_features)
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return super().forward(x)
        weight = F.dropout(self.weight, self.p, training=True)
        return F.linear(x, weight, self.bias)


def dense_stack(in_dim: int, widths: list[int], *, activation: str = "relu", batch_norm: bool = False,
                dropout: float = 0.0, dropconnect: float = 0.0) -> tuple[nn.Sequential, int]:
    """Hidden dense layers; returns the stack and its output width (in_dim when `widths` is empty)."""
    layers: list[nn.Module] = []
    for width in widths:
        layers.append(DropConnectLinear(in_dim, width, p=dropconnect) if dropconnect else nn.Linear(in_dim, width))
        if batch_norm:
            layers.append(nn.BatchNorm1d(width))
        layers.append(ACTIVATIONS[activation]())
        if dropout:
            layers.append(nn.Dropout(dropout))
        in_dim = width
    return nn.Sequential(*layers), in_dim
