"""The run directory on disk: model.json (format version, resolved recipe, signature, feature states) and
model.safetensors (the weights). Writing and reading them; never unpickles.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from dlforge._version import __version__
from dlforge.core.errors import ArtifactError
from dlforge.core.files import write_json
from dlforge.data.prepare import signature

FORMAT_VERSION = 1
MODEL_JSON = "model.json"
WEIGHTS = "model.safetensors"


def save_model(run_dir: Path, recipe, inputs: dict, outputs: dict, model: torch.nn.Module) -> None:
    from safetensors.torch import save_file

    run_dir = Path(run_dir)
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = run_dir / (WEIGHTS + ".tmp")
    save_file(weights, str(tmp), metadata={"format": "pt"})
    tmp.replace(run_dir / WEIGHTS)
    write_json(run_dir / MODEL_JSON, {
        "format_version": FORMAT_VERSION,
        "dlforge_version": __version__,
        "torch_version": torch.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "name": recipe.name,
        "recipe": recipe.model_dump(mode="json"),
        "signature": signature(inputs, outputs),
        "features": {"inputs": {n: f.state() for n, f in inputs.items()},
                     "outputs": {n: f.state() for n, f in outputs.items()}},
    })


def read_model_json(run_dir: Path) -> dict:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ArtifactError("no such run directory", where=str(run_dir), hint="train one with `dlforge train RECIPE`")
    missing = [f for f in (MODEL_JSON, WEIGHTS) if not (run_dir / f).is_file()]
    if missing:
        hint = ("training did not finish; resume with `dlforge train --resume " + str(run_dir) + "`"
                if (run_dir / "checkpoint").is_dir() else "train again, or point to a complete run directory")
        raise ArtifactError(f"run directory is missing {', '.join(missing)}", where=str(run_dir), hint=hint)
    try:
        meta = json.loads((run_dir / MODEL_JSON).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"model.json is not valid JSON (line {exc.lineno})", where=str(run_dir / MODEL_JSON)) from None
    version = meta.get("format_version")
    if not isinstance(version, int):
        raise ArtifactError("model.json has no format_version", where=str(run_dir / MODEL_JSON))
    if version > FORMAT_VERSION:
        raise ArtifactError(
            f"run directory has format version {version}; this dlforge ({__version__}) reads up to {FORMAT_VERSION}",
            where=str(run_dir), hint="upgrade dlforge: pip install -U dlforge")
    return meta


__all__ = ["FORMAT_VERSION", "MODEL_JSON", "WEIGHTS", "read_model_json", "save_model"]
