"""Training state on disk for exact resume: written atomically, read without unpickling code, bound to its recipe.

A checkpoint records the sha256 of the recipe that wrote it (`recipe_digest`): resuming it under another
recipe (a different seed, architecture or learning rate, e.g. after an `--overwrite` that was killed
half-way) is refused, where it once silently continued the old weights.

The digest covers what the recipe *says*, not what this version of dlforge fills in: fields at their default
value are left out (`recipe_identity`), so a field added to the recipe schema later, with a default that keeps the
old behaviour, leaves every earlier checkpoint resumable. The state says which digest it holds (`recipe_digest`:
DIGEST_VERSION); checkpoints written before this rule (no such key: every field, defaults filled in) are still
checked against that older digest.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal, get_args, get_origin

import torch
from pydantic import BaseModel

from dlforge.core.errors import ArtifactError
from dlforge.core.files import atomic_path

CHECKPOINT_DIR = "checkpoint"
STATE_FILE = "state.pt"
# What every trainer state holds (optional parts such as the AMP scaler or augmentation RNG are not checked).
REQUIRED_KEYS = ("model", "optimizer", "epoch", "step")
# The digest a state's `recipe_sha256` holds: 2 = `recipe_digest` (defaults left out); absent = the legacy one.
DIGEST_VERSION = 2


def _is_tag(field) -> bool:
    """A one-value Literal field (an input's `type`, an encoder's `name`): it says which kind of section this is, so
    it stays in the identity even at its default (two sections that differ only in it are different recipes)."""
    return get_origin(field.annotation) is Literal and len(get_args(field.annotation)) == 1


def _identity(model, dumped):
    """`dumped` (model's JSON dump) without the fields that equal their default; tags and extras always kept."""
    if isinstance(model, BaseModel) and isinstance(dumped, dict):
        fields = type(model).model_fields
        out = {}
        for key, value in dumped.items():
            field = fields.get(key)
            if field is not None and not _is_tag(field):
                default = field.get_default(call_default_factory=True, validated_data={})
                if getattr(model, key) == default:
                    continue
            out[key] = _identity(getattr(model, key, None), value)
        return out
    if isinstance(model, (list, tuple)) and isinstance(dumped, list):
        return [_identity(m, d) for m, d in zip(model, dumped)]
    if isinstance(model, dict) and isinstance(dumped, dict):
        return {k: _identity(model.get(k), v) for k, v in dumped.items()}
    return dumped


def recipe_identity(recipe) -> dict:
    """What identifies a recipe for resuming: its fields that differ from their defaults (recursively), the
    one-value tags (`type`, `name`) always, as JSON values."""
    return _identity(recipe, recipe.model_dump(mode="json"))


def recipe_digest(recipe) -> str:
    """sha256 of `recipe_identity` as canonical JSON (sorted keys): the same for the same recipe whatever its YAML
    formatting, whether a default was written out or left implicit, and whatever defaulted fields later versions
    add; different when any value differs from the recipe that wrote the checkpoint."""
    text = json.dumps(recipe_identity(recipe), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def legacy_recipe_digest(recipe) -> str:
    """The digest checkpoints held before `recipe_identity` (key `recipe_sha256`): every field, defaults filled in."""
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
    if recipe is not None and not _same_recipe(state, recipe):
        raise ArtifactError(
            "the checkpoint was written by a different recipe than the run's recipe.yaml (recipe.yaml was replaced "
            "after the checkpoint, e.g. by an interrupted --overwrite); resuming would continue other weights",
            where=str(path),
            hint=f"start the run over: `dlforge train RECIPE --out {run_dir} --overwrite`")
    return state


def _same_recipe(state: dict, recipe) -> bool:
    stored = state.get("recipe_sha256")  # absent in checkpoints written before any binding
    if stored is None:
        return True
    if state.get("recipe_digest") == DIGEST_VERSION:
        return stored == recipe_digest(recipe)
    return stored == legacy_recipe_digest(recipe)
