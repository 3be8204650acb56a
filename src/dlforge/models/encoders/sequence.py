"""Time-series encoders over (B, channels + 1, L) inputs whose last channel marks real steps.

`cnn` is the fully convolutional network of Wang et al. 2017 (FCN: conv-BN-ReLU blocks, global
average pooling) or, with `residual: true`, the ResNet of Fawaz et al. 2019; `lstm`/`gru` and
`transformer` project each step's channels to `dim` first.
"""

from __future__ import annotations

import torch
from torch import nn

from dlforge.models.encoders.base import Encoder, encoders
from dlforge.models.encoders.sequence_layers import RNNBackbone, TransformerBackbone, masked_mean


def split_mask(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, C+1, L) -> values (B, C, L) and the (B, L) bool mask of real steps."""
    return x[:, :-1], x[:, -1] > 0.5


def conv_bn(in_ch: int, out_ch: int, kernel: int) -> nn.Sequential:
    # Explicit (left, right) padding keeps the length for even kernels too (padding="same" copies the input then).
    return nn.Sequential(nn.ConstantPad1d(((kernel - 1) // 2, kernel // 2), 0.0),
                         nn.Conv1d(in_ch, out_ch, kernel, bias=False), nn.BatchNorm1d(out_ch))


class ResidualBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, kernels: list[int]):
        super().__init__()
        layers = []
        for i, k in enumerate(kernels):
            layers.append(conv_bn(in_ch if i == 0 else out_ch, out_ch, k))
            if i < len(kernels) - 1:
                layers.append(nn.ReLU())
        self.body = nn.Sequential(*layers)
        self.shortcut = conv_bn(in_ch, out_ch, 1) if in_ch != out_ch else nn.BatchNorm1d(out_ch)

    def forward(self, x):
        return torch.relu(self.body(x) + self.shortcut(x))


@encoders.register("sequence:cnn")
class SequenceCNN(Encoder):
    def __init__(self, config, signature: dict, regularization):
        super().__init__()
        in_ch = signature["channels"]
        kernels = list(config.kernel_sizes)
        blocks: list[nn.Module] = []
        for i, out_ch in enumerate(config.channels):
            if config.residual:
                blocks.append(ResidualBlock(in_ch, out_ch, kernels))
            else:
                blocks += [conv_bn(in_ch, out_ch, kernels[min(i, len(kernels) - 1)]), nn.ReLU()]
            in_ch = out_ch
        self.blocks = nn.Sequential(*blocks)
        self.output_dim = in_ch

    def forward(self, x):  # (B, C+1, L) -> (B, channels[-1])
        values, valid = split_mask(x)
        h = self.blocks(values)  # (B, F, L)
        return masked_mean(h.transpose(1, 2), valid)


@encoders.register("sequence:lstm")
@encoders.register("sequence:gru")
class SequenceRNN(Encoder):
    def __init__(self, config, signature: dict, regularization):
        super().__init__()
        self.project = nn.Linear(signature["channels"], config.dim)
        self.rnn = RNNBackbone(config, config.dim)
        self.output_dim = self.rnn.output_dim

    def forward(self, x):  # (B, C+1, L) -> (B, hidden * directions)
        values, valid = split_mask(x)
        return self.rnn(self.project(values.transpose(1, 2)), valid)


@encoders.register("sequence:transformer")
class SequenceTransformer(Encoder):
    """Steps projected to `dim`, a learned [CLS] vector in front (for cls pooling), then self-attention."""

    def __init__(self, config, signature: dict, regularization):
        super().__init__()
        self.project = nn.Linear(signature["channels"], config.dim)
        self.cls = nn.Parameter(torch.zeros(1, 1, config.dim))
        self.backbone = TransformerBackbone(config, signature["length"] + 1)
        self.output_dim = self.backbone.output_dim

    def forward(self, x):  # (B, C+1, L) -> (B, dim)
        values, valid = split_mask(x)
        h = self.project(values.transpose(1, 2))
        h = torch.cat([self.cls.expand(len(h), -1, -1), h], dim=1)
        valid = torch.cat([torch.ones_like(valid[:, :1]), valid], dim=1)
        return self.backbone(h, valid)

    def keep_attention(self, keep: bool = True) -> None:
        self.backbone.keep_attention(keep)

    def attention_maps(self) -> list[torch.Tensor]:
        return self.backbone.attention_maps()
