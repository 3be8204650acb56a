"""`cnn`: conv blocks (filters, kernel, pooling, batch-norm), then dense layers.

The seed's Keras model Conv32(3x3)-MaxPool-Conv64(3x3)-MaxPool-Dense128 is
`{name: cnn, channels: [32, 64], kernel_size: 3, dense: [128]}`.
"""

from __future__ import annotations

import torch
from torch import nn

from dlforge.core.errors import ModelError
from dlforge.models.encoders.base import Encoder, encoders
from dlforge.models.layers import ACTIVATIONS, dense_stack


@encoders.register("cnn")
class CNNEncoder(Encoder):
    def __init__(self, config, signature: dict, regularization):
        super().__init__()
        channels, height, width = signature["shape"]
        n_blocks = len(config.channels)
        kernels = _per_block(config.kernel_size, n_blocks, "kernel_size")
        strides = _per_block(config.stride, n_blocks, "stride")
        pads = [None] * n_blocks if isinstance(config.padding, str) else _per_block(config.padding, n_blocks, "padding")
        blocks: list[nn.Module] = []
        for filters, kernel, stride, pad in zip(config.channels, kernels, strides, pads):
            padding = pad if pad is not None else kernel // 2 if config.padding == "same" else 0
            for _ in range(config.convs_per_block):
                blocks.append(nn.Conv2d(channels, filters, kernel, stride=stride, padding=padding,
                                        bias=not config.batch_norm))
                if config.batch_norm:
                    blocks.append(nn.BatchNorm2d(filters))
                blocks.append(ACTIVATIONS[config.activation]())
                channels = filters
                height, width = (height + 2 * padding - kernel) // stride + 1, (width + 2 * padding - kernel) // stride + 1
            if config.pool != "none":
                step = config.pool_stride
                blocks.append(nn.MaxPool2d(2, step) if config.pool == "max" else nn.AvgPool2d(2, step))
                height, width = (height - 2) // step + 1, (width - 2) // step + 1
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
        self.dense, self.output_dim = dense_stack(flat, config.dense, activation=config.activation,
                                                  dropout=regularization.dropout,
                                                  dropconnect=regularization.dropconnect)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, dense[-1])
        return self.dense(self.flatten(self.features(x)))


def _per_block(value, n_blocks: int, name: str) -> list[int]:
    """An option given once for every block, or as one value per block."""
    if isinstance(value, int):
        return [value] * n_blocks
    if len(value) != n_blocks:
        raise ModelError(f"cnn: {name} lists {len(value)} values for {n_blocks} blocks", where=f"inputs.encoder.{name}",
                         hint=f"give one {name} for every block, or a single number for all")
    return list(value)
