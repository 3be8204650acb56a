"""Report a metric to a search trial every epoch and stop the run when the search prunes it (dlforge tune).

The trial is any object with `report(value, step)` and `should_prune()` (an Optuna trial is one); the
callback imports nothing of the search library until a trial is pruned. Pruning raises `optuna.TrialPruned`
from `on_epoch_end`, after the epoch's checkpoint vote and before the next epoch starts: the search catches it
and records the trial as pruned at that epoch; nothing after it (evaluation, model, report) is written.
"""

from __future__ import annotations

import math

from dlforge.training.callbacks.base import Callback


class ReportToTrial(Callback):
    """Each epoch: report `metrics[metric]` at step = epochs done; raise the pruned signal when told to."""

    def __init__(self, trial, metric: str):
        self.trial = trial
        self.metric = metric
        self.last_epoch = 0

    def on_epoch_end(self, trainer, epoch: int, metrics: dict[str, float]) -> bool:
        value = metrics.get(self.metric)
        self.last_epoch = epoch + 1
        if value is None or not math.isfinite(value):
            return False  # a non-finite epoch is the divergence check's business, not the pruner's
        self.trial.report(float(value), epoch + 1)
        last = epoch + 1 >= getattr(getattr(trainer, "config", None), "epochs", epoch + 2)
        if not last and self.trial.should_prune():  # after the last epoch there is nothing left to save
            import optuna

            raise optuna.TrialPruned(f"pruned after epoch {epoch + 1}: {self.metric} {value:.4g}")
        return False


__all__ = ["ReportToTrial"]
