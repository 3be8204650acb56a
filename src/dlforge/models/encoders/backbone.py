"""What every pretrained-backbone encoder shares: named blocks, freezing, gradual unfreezing, LR multiplier, cached input.

A subclass builds `self.backbone`, lists its blocks in forward order (`self.blocks`: name → module)
and implements `embed(x) -> (B, D)`. This base then
- freezes (`freeze: all | none | until:<block>`): frozen blocks get requires_grad=False and stay in
  eval mode even under `model.train()`, so BatchNorm running statistics and drop-connect behave as
  at inference (fine-tuning a frozen body with BN in train mode silently shifts its statistics);
- `unfreeze()` for gradual unfreezing (`unfreeze_at_epoch`, driven by a trainer callback);
- `lr_mult` for discriminative learning rates (read by the optimizer's parameter groups);
- `cached_input`: when True, forward receives precomputed embeddings (the frozen-feature fast path)
  and skips the backbone.
"""

from __future__ import annotations

import torch
from torch import nn

from dlforge.core.errors import ModelError
from dlforge.models.encoders.base import Encoder
from dlforge.models.layers import dense_stack


class BackboneEncoder(Encoder):
    blocks: dict[str, nn.Module]
    embed_dim: int

    def _finish(self, config, regularization, *, where: str) -> None:
        """Call at the end of a subclass constructor: freeze, then the dense layers after pooling."""
        self.config = config
        self.lr_mult = config.backbone_lr_mult
        self.unfreeze_at_epoch = config.unfreeze_at_epoch
        self.cached_input = False
        self.frozen: list[nn.Module] = []
        self.freeze(config.freeze, where=where)
        self.dense, self.output_dim = dense_stack(self.embed_dim, config.dense, dropout=regularization.dropout,
                                                  dropconnect=regularization.dropconnect)

    def block_names(self) -> list[str]:
        return list(self.blocks)

    def freeze(self, spec: str, *, where: str | None = None) -> None:
        names = self.block_names()
        if spec == "all":
            count = len(names)
        elif spec == "none":
            count = 0
        elif spec.startswith("until:") and spec[6:] in names:
            count = names.index(spec[6:])
        else:
            raise ModelError(f"{self.config.name} has no block '{spec[6:] if spec.startswith('until:') else spec}'",
                             where=where, hint=f"blocks: {', '.join(names)}")
        for param in self.backbone.parameters():
            param.requires_grad_(True)
        self.frozen = [self.blocks[n] for n in names[:count]]
        for module in self.frozen:
            module.requires_grad_(False)
        if spec == "all":  # parameters outside the named blocks (e.g. a classifier we never call) too
            self.backbone.requires_grad_(False)
        self.train(self.training)

    def unfreeze(self) -> None:
        self.freeze("none")

    @property
    def fully_frozen(self) -> bool:
        """Frozen for the whole run: the condition for caching embeddings."""
        return self.config.freeze == "all" and self.unfreeze_at_epoch is None

    def backbone_parameters(self) -> list[nn.Parameter]:
        """The parameters the optimizer must hold at the LR multiplier: trainable now, or unfrozen later."""
        params = list(self.backbone.parameters())
        return params if self.unfreeze_at_epoch is not None else [p for p in params if p.requires_grad]

    def train(self, mode: bool = True):
        super().train(mode)
        for module in self.frozen:
            module.eval()
        return self

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, ...) raw input or (B, embed_dim) cached -> (B, output_dim)
        return self.dense(x if self.cached_input else self.embed(x))


def pool(features: torch.Tensor, kind: str) -> torch.Tensor:  # (B, C, H, W) -> (B, C)
    return features.amax((2, 3)) if kind == "max" else features.mean((2, 3))
