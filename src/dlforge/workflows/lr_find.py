"""`dlforge lr-find` and `optimizer.lr: auto`: the learning-rate range test on a throw-away model and trainer.

The model is built by the same factory as training (same data, augmentation and frozen-feature cache),
on the training split only; `training.lr_find` holds the test itself.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from dlforge.data import prepare
from dlforge.data.prepare import Encoded
from dlforge.recipe.io import load_recipe, recipe_base_dir
from dlforge.report.plots import check_plot_path, plot_range_test
from dlforge.training.lr_find import LRFindResult, range_test
from dlforge.training.setup import build_training


def range_test_for(recipe, prepared, *, plot: Path | None, start_lr: float = 1e-7, end_lr: float = 10.0,
                steps: int = 200) -> LRFindResult:
    """The LR range test on a throw-away model (same data, augmentation and frozen-feature cache as training)."""
    probe = recipe.model_copy(deep=True)
    if probe.training.optimizer.lr == "auto":
        probe.training.optimizer.lr = 1.0  # only the parameter groups' ratios matter; the test sets the rates
    probe.training.early_stopping = None
    train_split = Encoded(dict(prepared.splits["train"].x), dict(prepared.splits["train"].y))
    with tempfile.TemporaryDirectory() as tmp:
        built = build_training(probe, prepared, run_dir=Path(tmp), splits={"train": train_split})
        result = range_test(built.trainer, start_lr=start_lr, end_lr=end_lr, steps=steps)
    if plot is not None:
        plot_range_test(result, plot)
    return result


def lr_find(recipe=None, *, overrides: list[str] | None = None, plot: str | Path | None = "lr_find.svg",
            start_lr: float = 1e-7, end_lr: float = 10.0, steps: int = 200) -> LRFindResult:
    """Learning-rate range test for a recipe: returns the smoothed curve and a suggested rate, and saves the plot."""
    if plot:
        check_plot_path(plot)  # before minutes of sweeping, not after
    recipe = load_recipe(recipe, overrides)
    if recipe.training.threads:
        torch.set_num_threads(recipe.training.threads)
    prepared = prepare(recipe, base_dir=recipe_base_dir(recipe))
    return range_test_for(recipe, prepared, plot=Path(plot) if plot else None, start_lr=start_lr, end_lr=end_lr,
                       steps=steps)
