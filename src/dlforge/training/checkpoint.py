"""Training state on disk for exact resume: written atomically, read without unpickling code, bound to its recipe.

A checkpoint records the sha256 of the recipe that wrote it (`recipe_digest`): resuming it under another
recipe (a different seed, architecture or learning rate, e.g. after an `--overwrite` that was killed
half-way) is refused, where it once silently continued the old weights.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from dlforge.core.errors import ArtifactError
from dlforge.core.files import atomic_path

CHECKPOINT_DIR = "checkpoint"
STATE_FILE = "state.pt"
# What every trainer state holds (optional parts such as the AMP scaler or augmentation RNG are not checked).
REQUIRED_KEYS = ("model", "optimizer", "epoch", "step")


def recipe_digest(recipe) -> str:
    """sha256 of the resolved recipe (every field, defaults filled in), independent of YAML formatting."""
    text = json.dumps(recipe.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def save_checkpoint(run_dir: Path, state: dict) -> Path:
    path = Path(run_dir) / CHECKPOINT_DIR / STATE_FILE
    with atomic_path(path) as tmp:  # a crash mid-write leaves the previous checkpoint intact
        torch.save(state, tmp)
    return path


def has_checkpoint(run_dir: Path) -> bool:
    return (Path(run_dir) / CHECKPOINT_DIR / STATE_FILE).is_file()


def load_checkpoint(run_dir: Path, *, recipe=None) -> dict:
    """The training state of `run_dir`; with `recipe`, refused unless that recipe wrote it."""
    path = Path(run_dir) / CHECKPOINT_DIR / STATE_FILE
    if not path.is_file():
        raise ArtifactError("no checkpoint to resume from", where=str(run_dir),
                            hint=f"expected {path}; start a new run with `dlforge train RECIPE --out {run_dir}`")
    hint = f"the file is damaged; start the run again with `dlforge train RECIPE --out {run_dir} --overwrite`"
    try:
        # weights_only=True: tensors, numbers, strings and containers only; never arbitrary objects.
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises RuntimeError, EOFError, UnpicklingError... for a truncated or foreign file
        raise ArtifactError(f"checkpoint cannot be read ({exc.__class__.__name__}: {str(exc)[:200]})", where=str(path),
                            hint=hint) from None
    # A readable file that is not a trainer state (another tool's .pt, a hand edit) would fail later with a KeyError.
    missing = [key for key in REQUIRED_KEYS if not isinstance(state, dict) or key not in state]
    if missing:
        raise ArtifactError(f"checkpoint is not a dlforge training state (missing {', '.join(missing)})",
                            where=str(path), hint=hint)
    stored = state.get("recipe_sha256")  # absent in checkpoints written before the binding existed
    if recipe is not None and stored is not None and stored != recipe_digest(recipe):
        raise ArtifactError(
            "the checkpoint was written by a different recipe than the run's recipe.yaml (recipe.yaml was replaced "
            "after the checkpoint, e.g. by an interrupted --overwrite); resuming would continue other weights",
            where=str(path),
            hint=f"start the run over: `dlforge train RECIPE --out {run_dir} --overwrite`")
    return state
