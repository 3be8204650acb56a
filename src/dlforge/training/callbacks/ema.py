"""Exponential moving average of the weights (`training.callbacks: [{name: ema, decay: 0.999}]`).

After every optimizer step the callback moves a shadow copy of each parameter towards the new weights:
shadow <- shadow + (1 - d_t) (weights - shadow), with d_t = min(decay, (1 + t) / (10 + t)) at update t (the warm-up
of TensorFlow's ExponentialMovingAverage, so a short run is not dominated by the initial weights). When training
ends the shadow becomes the model's weights: the test metrics, the saved weights and everything after training use
the average (as Keras' `use_ema` and timm's ModelEma; Polyak & Juditsky 1992).

Why it helps: the last iterate of a noisy optimizer wanders around the optimum; the average of the last ~1/(1-decay)
iterates sits nearer it. Under DP-SGD (De et al. 2022, "Unlocking high-accuracy differentially private image
classification through scale") it is free: the average is computed from the already privatised iterates, so it is
post-processing and spends no privacy budget.

Only parameters are averaged (buffers such as BatchNorm statistics keep their trained values). The shadow is part
of the checkpoint (`state_dict`), so a resumed run ends with the same weights as an uninterrupted one. Early
stopping is refused with it: the epoch chosen on the raw weights' validation score would say nothing of the average.
"""

from __future__ import annotations

import torch

from dlforge.core.errors import RecipeError
from dlforge.training.callbacks.base import Callback, callbacks


CONFLICT = ("training.early_stopping: cannot be combined with the ema callback (the epoch would be chosen on the raw "
            "weights, and training ends with their average)")
HINT = ("ema decay: e.g. {name: ema, decay: 0.999} (it averages about the last 1/(1 - decay) = 1,000 optimizer "
        "steps); with early stopping, remove one of the two")


@callbacks.register("ema")
class WeightAverage(Callback):
    def __init__(self, *, decay: float = 0.999):
        problems = self._problems(decay)
        if problems:
            raise RecipeError(problems, hint=HINT)
        self.decay = float(decay)
        self.updates = 0
        self.shadow: list[torch.Tensor] | None = None
        self._params: list[torch.Tensor] = []

    @staticmethod
    def _problems(decay) -> list[str]:
        if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0.0 < float(decay) < 1.0:
            return [f"training.callbacks: ema decay must be a number strictly between 0 and 1, got {decay!r}"]
        return []

    @staticmethod
    def check_recipe(recipe, *, decay: float = 0.999) -> list[str]:
        """Before any data is read (`dlforge train` calls it through check_callbacks)."""
        problems = WeightAverage._problems(decay)
        if recipe.training.early_stopping is not None:
            problems.append(CONFLICT)
        return problems

    def on_fit_start(self, trainer) -> None:
        if trainer.early_stopping is not None:  # a caller that built the trainer without check_callbacks
            raise RecipeError(CONFLICT, hint=HINT)
        self._params = [p for p in trainer.model.parameters() if p.is_floating_point()]
        if self.shadow is None:
            self.shadow = [p.detach().clone() for p in self._params]
        else:  # restored from a checkpoint (on the CPU)
            self.shadow = [s.to(p.device) for p, s in zip(self._params, self.shadow)]

    def on_step_end(self, trainer, step: int) -> None:
        if trainer.accumulate > 1 and (step + 1) % trainer.accumulate and step + 1 != len(trainer.batches):
            return  # inside an accumulation group: the optimizer has not stepped
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        with torch.no_grad():
            torch._foreach_lerp_(self.shadow, [p.detach() for p in self._params], 1.0 - decay)

    def on_fit_end(self, trainer, result) -> None:
        with torch.no_grad():
            for p, s in zip(self._params, self.shadow):
                p.copy_(s)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates,
                "shadow": [s.detach().cpu().clone() for s in self.shadow] if self.shadow is not None else None}

    def load_state_dict(self, state: dict) -> None:
        self.updates = int(state["updates"])
        self.shadow = None if state["shadow"] is None else [s.clone() for s in state["shadow"]]
