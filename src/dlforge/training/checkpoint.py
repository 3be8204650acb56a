"""Training state on disk for exact resume: written atomically, read without unpickling code."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from dlforge.core.errors import ArtifactError

CHECKPOINT_DIR = "checkpoint"
STATE_FILE = "state.pt"


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
    try:
        # weights_only=True: tensors, numbers, strings and containers only; never arbitrary objects.
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ArtifactError(f"checkpoint cannot be read ({exc.__class__.__name__}: {str(exc)[:200]})", where=str(path),
                            hint="the file is damaged; start the run again") from None
