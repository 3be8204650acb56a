"""`mlp`: flatten the input, then hidden dense layers (the seed's MNIST 784-256-128 network)."""

from __future__ import annotations

import math

from torch import nn

from dlforge.models.encoders.base import Encoder, encoders
from dlforge.models.layers import dense_stack


@encoders.register("mlp")
class MLPEncoder(Encoder):
    def __init__(self, config, signature: dict, regularization):
        super().__init__()
        in_dim = math.prod(signature["shape"]) if "shape" in signature else signature["width"]
        self.flatten = nn.Flatten()
        self.layers, self.output_dim = dense_stack(
            in_dim, config.layers, activation=config.activation, batch_norm=config.batch_norm,
            dropout=regularization.dropout, dropconnect=regularization.dropconnect)

    def forward(self, x):  # (B, C, H, W) or (B, D) -> (B, layers[-1])
        return self.layers(self.flatten(x))
