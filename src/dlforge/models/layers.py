"""Dense building blocks shared by encoders and the combiner: Linear (or DropConnect) → norm → act → dropout."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

@runtime_checkable
class RandomStateful(Protocol):
    """A model part that draws from its own generator during training (a negative sampler): the trainer saves
    and restores its state in every checkpoint, so a resumed run draws what the uninterrupted one drew."""

    def rng_state(self) -> torch.Tensor | None: ...

    def load_rng_state(self, state: torch.Tensor) -> None: ...


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


def batch_norm_to_group_norm(model: nn.Module) -> list[str]:
    """Replace every trainable BatchNorm by GroupNorm(gcd(32, C), C), in place; returns the replaced layers' names.

    DP-SGD needs per-example gradients, and batch normalisation mixes a batch's examples (docs/privacy.md). The
    rule is Opacus' `ModuleValidator.fix` (tests check they agree); done here, without Opacus, so that a saved
    model rebuilds the same layers wherever it is loaded. A frozen BatchNorm (a frozen pretrained backbone runs
    in eval mode, on its stored statistics) is kept.
    """
    import math

    replaced = []
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and any(p.requires_grad for p in module.parameters()):
            parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
            setattr(parent, name.rpartition(".")[2],
                    nn.GroupNorm(math.gcd(32, module.num_features), module.num_features, affine=module.affine))
            replaced.append(name)
    return replaced
