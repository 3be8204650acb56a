"""The encoder registry and contract: `Encoder(config, signature, regularization)` with `output_dim`."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import nn

from dlforge.core.registry import Registry


class Encoder(nn.Module):
    """Maps an input tensor (B, ...) to features (B, output_dim).

    `signature` is the input's description from the data layer (shapes, cardinalities), passed as a
    plain dict so that models never import data code.
    """

    output_dim: int
    # True when the input is right-padded token ids (padding id `pad_id`) and the encoder's cost follows each
    # row's real length (it trims or packs the padding): batching rows of similar length then saves time.
    cost_follows_length: bool = False
    pad_id: int = 0

    def stored_architecture(self) -> dict | None:
        """What rebuilding this encoder needs beyond its config and signature (e.g. a pretrained network's own
        config file), kept in model.json so that loading a run reads nothing else. The constructor takes it back
        as `architecture=`. None (the default): nothing to keep."""
        return None



@runtime_checkable
class Backbone(Protocol):
    """What training needs from an encoder around a pretrained backbone (models/encoders/backbone.py implements it):
    its parameters at their own learning-rate multiplier, freezing and gradual unfreezing, and the frozen-feature
    fast path (`embed` once, then `cached_input` makes forward skip the backbone). Training code asks
    `isinstance(module, Backbone)` instead of probing attributes one by one."""

    backbone: nn.Module
    embed_dim: int
    lr_mult: float
    unfreeze_at_epoch: int | None
    cached_input: bool

    @property
    def fully_frozen(self) -> bool: ...

    def backbone_parameters(self) -> list[nn.Parameter]: ...

    def unfreeze(self) -> None: ...

    def embed(self, x: torch.Tensor) -> torch.Tensor: ...


encoders: Registry[type[Encoder]] = Registry("encoder")
