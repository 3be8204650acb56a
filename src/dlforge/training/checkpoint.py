"""Training state on disk for exact resume: written atomically, read without unpickling code."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from dlforge.core.errors import ArtifactError

CHECKPOINT_DIR = "checkpoint"
STATE_FILE = "state.pt"
# What every trainer state holds (optional parts such as the AMP scaler or augmentation RNG are not checked).
REQUIRED_KEYS = ("model", "optimizer", "epoch", "step")


def save_checkpoint(run_dir: Path, state: dict) -> Path:
    folder = Path(run_dir) / CHECKPOINT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / STATE_FILE
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # a crash mid-write leaves the previous checkpoint intact
    return path


def has_checkpoint(run_dir: Path) -> bool:
    return (Path(run_dir) / CHECKPOINT_DIR / STATE_FILE).is_file()


def load_checkpoint(run_dir: Path) -> dict:
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
    return state
