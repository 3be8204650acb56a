"""Stopping rules: early stopping on a logged metric (training.early_stopping), and stop on a non-finite loss."""

from __future__ import annotations

import math

from dlforge.recipe import higher_is_better
from dlforge.training.callbacks.base import Callback, callbacks


class EarlyStopping(Callback):
    """Stops when `metric` has not improved for `patience` epochs; keeps the best weights."""

    def __init__(self, config):
        self.config = config
        auto = "max" if higher_is_better(config.metric) else "min"
        self.mode = config.mode if config.mode != "auto" else auto
        self.best = -math.inf if self.mode == "max" else math.inf
        self.best_epoch = -1
        self.bad_epochs = 0
        self.best_state = None

    def improved(self, value: float) -> bool:
        if self.mode == "max":
            return value > self.best + self.config.min_delta
        return value < self.best - self.config.min_delta

    def on_epoch_end(self, trainer, epoch: int, metrics: dict[str, float]) -> bool:
        value = metrics[self.config.metric]
        if self.improved(value):
            self.best, self.best_epoch, self.bad_epochs = value, epoch, 0
            if self.config.restore_best:
                # under FSDP gathered to rank 0 (every process takes part; the others get {})
                self.best_state = {k: v.detach().clone() for k, v in trainer.model_state().items()}
            return False
        self.bad_epochs += 1
        return self.bad_epochs >= self.config.patience

    def state_dict(self):
        return {"best": self.best, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs,
                "best_state": self.best_state}

    def load_state_dict(self, state):
        self.best, self.best_epoch, self.bad_epochs = state["best"], state["best_epoch"], state["bad_epochs"]
        self.best_state = state["best_state"]


@callbacks.register("stop_on_nan")
class StopOnNaN(Callback):
    """Stops at the end of an epoch whose training loss is NaN or infinite (Keras' TerminateOnNaN).

    Checked once an epoch from the logged mean loss, not per step: a per-step check is a host sync.
    """

    def __init__(self, *, metric: str = "train.loss"):
        self.metric = metric

    def on_epoch_end(self, trainer, epoch: int, metrics: dict[str, float]) -> bool:
        return not math.isfinite(metrics[self.metric])
