"""`scatter`: a fixed wavelet scattering transform (kymatio's Scattering2D), GroupNorm, then a small CNN.

Tramer & Boneh 2021 ("Differentially Private Learning Needs Better Features"): hand-crafted ScatterNet
features (Oyallon & Mallat 2015) make DP-SGD far easier than learning the first layers from pixels, because
the noise is spread over the few weights of the head only. With J = 2 and L = 8 a 28x28 grey image becomes
81 channels of 7x7 (1 + J*L + L^2*J*(J-1)/2 paths per image channel, each down-sampled by 2^J).

The transform has no trainable weight (its Morlet filters are buffers, rebuilt from J, L and the image
size), so the optimizer, the per-example clipper and the accountant never see it. It implements the
`Backbone` protocol as a fully frozen backbone: with no augmentation on the input, training computes the
features once per dataset through the frozen-feature cache (training/feature_cache.py) and trains only the
head; serving and export run the transform on raw images.

The head: GroupNorm over the scattering channels without affine weights (per-image normalisation, so no
privacy cost; Tramer & Boneh's `num_groups` 27 for 81 channels), then the `cnn` encoder's blocks and dense
layers on the (channels, H/2^J, W/2^J) map. `channels: []` with `dense: []` is their ScatterNet + linear model.
"""

from __future__ import annotations

import torch
from torch import nn

from dlforge.core.errors import DlforgeError, ModelError
from dlforge.models.encoders.base import Encoder, encoders
from dlforge.models.encoders.cnn import CNNEncoder

EXTRA = "pip install 'dlforge[scatter]'"


def scattering_class():
    """kymatio's torch Scattering2D. Imported from its 2-D frontend: `kymatio.torch` also imports the 3-D
    transform, whose `scipy.special.sph_harm` newer SciPy (1.17) no longer has."""
    try:
        from kymatio.scattering2d.frontend.torch_frontend import ScatteringTorch2D
    except ImportError:
        raise DlforgeError("the scatter encoder needs kymatio (the wavelet scattering transform), which is not "
                           "installed", where="inputs.encoder.name", hint=EXTRA) from None
    return ScatteringTorch2D


@encoders.register("scatter")
class ScatterEncoder(Encoder):
    def __init__(self, config, signature: dict, regularization):
        super().__init__()
        channels, height, width = signature["shape"]
        if min(height, width) < 2 ** (config.J + 1):
            raise ModelError(f"scatter: a {height}x{width} image is too small for J={config.J} (the transform "
                             f"averages over 2^J = {2 ** config.J} pixels)", where="inputs.encoder.J",
                             hint=f"lower J, or set preprocessing.size to at least {2 ** (config.J + 1)}")
        self.config = config
        self.backbone = scattering_class()(J=config.J, shape=(height, width), L=config.L, max_order=config.max_order)
        with torch.no_grad():
            paths, self.map_h, self.map_w = self.backbone(torch.zeros(1, channels, height, width)).shape[2:]
        self.map_channels = channels * paths
        self.embed_dim = self.map_channels * self.map_h * self.map_w
        if self.map_channels % config.norm_groups:
            raise ModelError(f"scatter: norm_groups {config.norm_groups} does not divide the {self.map_channels} "
                             "scattering channels", where="inputs.encoder.norm_groups",
                             hint=f"use a divisor of {self.map_channels}, e.g. 1 or {self.map_channels}")
        self.norm = nn.GroupNorm(config.norm_groups, self.map_channels, affine=False)
        self.head = CNNEncoder(config, {"shape": (self.map_channels, self.map_h, self.map_w)}, regularization)
        self.output_dim = self.head.output_dim
        # The Backbone protocol, as a backbone frozen for the whole run.
        self.lr_mult = 1.0
        self.unfreeze_at_epoch = None
        self.cached_input = False

    @property
    def fully_frozen(self) -> bool:
        return True

    def backbone_parameters(self) -> list[nn.Parameter]:
        return []

    def unfreeze(self) -> None:  # nothing to unfreeze: the filters are fixed
        return None

    @torch.no_grad()
    def embed(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, C * paths * h * w)
        return self.backbone(x.float().contiguous()).reshape(len(x), -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # raw (B, C, H, W), or cached (B, embed_dim) -> (B, output_dim)
        features = x if self.cached_input else self.embed(x)
        return self.head(self.norm(features.reshape(len(x), self.map_channels, self.map_h, self.map_w)))
