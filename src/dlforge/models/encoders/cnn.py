"""`cnn`: conv blocks (filters, kernel, pooling, batch-norm), then dense layers.

The seed's Keras model Conv32(3x3)-MaxPool-Conv64(3x3)-MaxPool-Dense128 is
`{name: cnn, channels: [32, 64], kernel_size: 3, dense: [128]}`.
"""

from __future__ import annotations

import torch
from torch import nn

from dlforge.core.errors import ModelError
from dlforge.models.encoders.base import Encoder, encoders
from dlforge.models.layers import dense_stack


@encoders.register("cnn")
class CNNEncoder(Encoder):
    def __init__(self, config, signature: dict, regularization):
        super().__init__()
        channels, height, width = signature["shape"]
        padding = config.kernel_size // 2 if config.padding == "same" else 0
        blocks: list[nn.Module] = []
        for filters in config.channels:
            for _ in range(config.convs_per_block):
                blocks.append(nn.Conv2d(channels, filters, config.kernel_size, padding=padding, bias=not config.batch_norm))
                if config.batch_norm:
                    blocks.append(nn.BatchNorm2d(filters))
                blocks.append(nn.ReLU())
                channels = filters
                height, width = height - 2 * (config.kernel_size // 2 - padding), width - 2 * (config.kernel_size // 2 - padding)
            if config.pool != "none":
                blocks.append(nn.MaxPool2d(2) if config.pool == "max" else nn.AvgPool2d(2))
                height, width = height // 2, width // 2
            if height < 1 or width < 1:
                raise ModelError(
                    f"cnn: a {signature['shape'][1]}x{signature['shape'][2]} image shrinks to nothing after "
                    f"{len(config.channels)} blocks", where="inputs.encoder.channels",
                    hint="use fewer blocks, padding: same, pool: none, or a larger preprocessing.size")
        self.features = nn.Sequential(*blocks)
        if config.global_pool:
            self.flatten = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
            flat = channels
        else:
            self.flatten = nn.Flatten()
            flat = channels * height * width
        self.dense, self.output_dim = dense_stack(flat, config.dense, dropout=regularization.dropout,
                                                  dropconnect=regularization.dropconnect)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, dense[-1])
        return self.dense(self.flatten(self.features(x)))
