"""The encoder registry and contract: `Encoder(config, signature, regularization)` with `output_dim`."""

from __future__ import annotations

from torch import nn

from dlforge.registry import Registry


class Encoder(nn.Module):
    """Maps an input tensor (B, ...) to features (B, output_dim).

    `signature` is the input's description from the data layer (shapes, cardinalities), passed as a
    plain dict so that models never import data code.
    """

    output_dim: int


encoders: Registry[type[Encoder]] = Registry("encoder")
