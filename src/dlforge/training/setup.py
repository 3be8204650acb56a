"""The one place a trainer is assembled: `build_training(recipe, prepared)`.

`dlforge train`, `cv`, `lr-find` (and every later caller: tuning trials, federated clients,
compression fine-tunes, distillation) build their model and trainer here, so that what one of them
trains is exactly what the others train: the same seed, loss weights, target scales, frozen-feature
cache, gradual unfreezing and batch augmentation.

The plugins pass through here to the trainer: a strategy (device and wrapping; `SingleDevice` by
default), model transforms, loss hooks, callbacks (the recipe's `training.callbacks` by name, then
the caller's) and a stop request.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from dlforge.data.augment import build_augmenter
from dlforge.data.prepare import Encoded, Prepared
from dlforge.data.interactions import interaction_tensors
from dlforge.models import build_model
from dlforge.models.recommend import RecommenderModel
from dlforge.training.callbacks import GradualUnfreeze, build_callbacks
from dlforge.training.feature_cache import apply_feature_cache
from dlforge.training.memory import enable_activation_checkpointing
from dlforge.training.strategy import Strategy, build_strategy
from dlforge.training.trainer import LossHook, ModelTransform, Trainer


@dataclass
class Training:
    """What `build_training` assembled: the model, its trainer, and how backbone inputs were cached."""

    model: torch.nn.Module
    trainer: Trainer
    cache_report: dict = field(default_factory=dict)


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def attach_loss_weights(model, prepared: Prepared) -> None:
    """Class weights and positive weights depend on training label counts, so they are set after data prep."""
    train_y = prepared.splits["train"].y
    for name, feature in prepared.outputs.items():
        weight = None
        if hasattr(feature, "class_weights"):
            weight = feature.class_weights(train_y[name])
        elif hasattr(feature, "pos_weight"):
            weight = feature.pos_weight(train_y[name])
        model.heads[name].class_weight = weight


def output_scales(prepared: Prepared) -> dict:
    """How each number output maps back to the user's units (its std and shift, and a log transform undone):
    metrics are reported in those units."""
    signature = prepared.signature()["outputs"]
    return {n: f.to_units for n, f in prepared.outputs.items() if signature[n]["type"] == "number"}


def build_training(recipe, prepared: Prepared, *, run_dir: Path, splits: dict[str, Encoded] | None = None,
                   callbacks=(), progress: bool = False, strategy: Strategy | str | None = None,
                   model_transforms: tuple[ModelTransform, ...] = (), loss_hooks: tuple[LossHook, ...] = (),
                   stop=None) -> Training:
    """A seeded model and its trainer for `recipe` on `prepared` data (or on `splits` of it, e.g. train only)."""
    splits = prepared.splits if splits is None else splits
    recipe_callbacks = build_callbacks(recipe)  # unknown names fail before any model is built
    strategy = build_strategy(strategy, recipe.training)
    seed_everything(recipe.training.seed)
    signature = prepared.signature()
    model = build_model(recipe, signature)
    attach_loss_weights(model, prepared)
    if recipe.training.activation_checkpointing:
        enable_activation_checkpointing(model)
    if isinstance(model, RecommenderModel):  # seen items, popularity, side catalogues, the sampler's positives
        model.attach(interaction_tensors(recipe, prepared))
    # Frozen backbone: embed once, on the device training will use.
    cache_report = apply_feature_cache(recipe, model, splits, device=strategy.device)
    unfreeze = GradualUnfreeze(model)
    trainer = Trainer(recipe, model, splits["train"], splits.get("val"), signature, run_dir=run_dir,
                      callbacks=[*recipe_callbacks, *callbacks, *([unfreeze] if unfreeze else [])], progress=progress,
                      scales=output_scales(prepared), augment=build_augmenter(recipe, prepared.inputs),
                      strategy=strategy, model_transforms=model_transforms, loss_hooks=loss_hooks, stop=stop)
    # The trainer's model: a model transform may have returned a new module.
    return Training(trainer.model, trainer, cache_report)


__all__ = ["Training", "attach_loss_weights", "build_training", "output_scales", "seed_everything"]
