"""Gradual unfreezing: at the start of epoch `unfreeze_at_epoch` (1-based), a frozen backbone starts training.

Idempotent and driven by the epoch number alone, so a resumed run unfreezes exactly as the
uninterrupted one did (the optimizer already holds the backbone's parameters, see optim.parameter_groups).
"""

from __future__ import annotations

from dlforge.training.callbacks.base import Callback
from dlforge.models.encoders.base import Backbone


class GradualUnfreeze(Callback):
    def __init__(self, model):
        self.encoders = [m for m in model.modules() if isinstance(m, Backbone) and m.unfreeze_at_epoch is not None]
        self.done: set[int] = set()

    def __bool__(self) -> bool:
        return bool(self.encoders)

    def on_epoch_start(self, trainer, epoch: int) -> None:
        for index, encoder in enumerate(self.encoders):
            if index not in self.done and epoch + 1 >= encoder.unfreeze_at_epoch:
                encoder.unfreeze()
                encoder.train(trainer.model.training)
                self.done.add(index)
                # L1/L2 penalties cover the newly trainable weights from now on.
                trainer.penalized = [p for p in trainer.model.parameters() if p.ndim > 1 and p.requires_grad]
