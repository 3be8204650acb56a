"""Training: the loop, optimizers and schedules, callbacks, checkpoints."""

from dlforge.training.trainer import Trainer, TrainResult

__all__ = ["Trainer", "TrainResult"]
