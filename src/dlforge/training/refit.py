"""`training.refit`: after the run's training (early-stopped on val), a fresh model trained on train + val.

The leave-last-out protocol of the recommendation papers (NCF, SASRec, RecBole) tests on each user's last interaction
with the one before it (val) known: it is in the test row's history and among the items excluded from the ranking,
and the final model is often refitted with it. Here the refit is a second `build_training` with the same seed on
the pooled rows (train then val, so each user's sequence stays in time order), for the number of epochs the first
training kept (its best epoch, else every epoch it ran), without validation. Its checkpoints go to a folder in the
run directory that is removed afterwards: a resumed run redoes the refit from the start (the same seed, the same
result).
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import torch

from dlforge.data.prepare import Encoded, Prepared
from dlforge.training.setup import Training, build_training

REFIT_DIR = "refit"


def pooled_splits(prepared: Prepared) -> dict[str, Encoded]:
    """train + val as the training split (val's rows after train's), test as it is; no val."""
    train, val = prepared.splits["train"], prepared.splits["val"]
    pooled = Encoded({k: torch.cat([v, val.x[k]]) for k, v in train.x.items()},
                     {k: torch.cat([v, val.y[k]]) for k, v in train.y.items()})
    return {"train": pooled, **({"test": prepared.splits["test"]} if "test" in prepared.splits else {})}


def refit_epochs(result) -> int:
    return result.best_epoch or result.epochs_run


def refit(recipe, prepared: Prepared, epochs: int, *, run_dir: Path, callbacks=(), progress: bool = False,
          stop=None) -> tuple[Training, object, Prepared]:
    """(the refit's model and trainer, its TrainResult, the pooled Prepared it was trained on)."""
    training = recipe.training.model_copy(update={"epochs": max(1, epochs), "early_stopping": None, "refit": False})
    refit_recipe = recipe.model_copy(update={"training": training})
    pooled = dataclasses.replace(prepared, splits=pooled_splits(prepared))
    folder = Path(run_dir) / REFIT_DIR
    shutil.rmtree(folder, ignore_errors=True)
    built = build_training(refit_recipe, pooled, run_dir=folder, callbacks=callbacks, progress=progress, stop=stop)
    result = built.trainer.fit(None)
    shutil.rmtree(folder, ignore_errors=True)
    return built, result, pooled


__all__ = ["REFIT_DIR", "pooled_splits", "refit", "refit_epochs"]
