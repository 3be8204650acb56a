"""`resnet`: a small residual network for 28-64 px images (He et al. 2016, basic blocks, pre-pooling stem)."""

from __future__ import annotations

import torch
from torch import nn

from dlforge.models.encoders.base import Encoder, encoders
from dlforge.models.layers import dense_stack


class BasicBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.shortcut = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


@encoders.register("resnet")
class ResNetEncoder(Encoder):
    def __init__(self, config, signature: dict, regularization):
        super().__init__()
        channels = signature["shape"][0]
        widths = config.widths
        self.stem = nn.Sequential(nn.Conv2d(channels, widths[0], 3, padding=1, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU())
        stages: list[nn.Module] = []
        in_ch = widths[0]
        for index, width in enumerate(widths):
            for block in range(config.blocks_per_stage):
                stride = 2 if index > 0 and block == 0 else 1
                stages.append(BasicBlock(in_ch, width, stride))
                in_ch = width
        self.stages = nn.Sequential(*stages)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.dense, self.output_dim = dense_stack(in_ch, config.dense, dropout=regularization.dropout,
                                                  dropconnect=regularization.dropconnect)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, width)
        return self.dense(self.pool(self.stages(self.stem(x))))
