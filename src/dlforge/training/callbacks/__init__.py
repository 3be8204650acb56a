"""Training callbacks. They return decisions (stop or not) that the trainer combines: any stop wins.

No base class is needed: the trainer calls `on_step_end(trainer, step)` and `on_epoch_end(trainer,
epoch, metrics)` on objects that define them (Lightning Fabric's style).
"""

from __future__ import annotations

import math
import sys
import time

from dlforge.recipe import HIGHER_IS_BETTER


class EarlyStopping:
    """Stops when `metric` has not improved for `patience` epochs; keeps the best weights."""

    def __init__(self, config):
        self.config = config
        leaf = config.metric.rsplit(".", 1)[-1]
        self.mode = config.mode if config.mode != "auto" else ("max" if leaf in HIGHER_IS_BETTER else "min")
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
                self.best_state = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
            return False
        self.bad_epochs += 1
        return self.bad_epochs >= self.config.patience

    def state_dict(self):
        return {"best": self.best, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs,
                "best_state": self.best_state}

    def load_state_dict(self, state):
        self.best, self.best_epoch, self.bad_epochs = state["best"], state["best_epoch"], state["bad_epochs"]
        self.best_state = state["best_state"]


def format_metrics(metrics: dict[str, float], keys=None) -> str:
    keys = keys or [k for k in metrics if k.startswith(("train.loss", "val."))]
    return "  ".join(f"{k} {metrics[k]:.4f}" for k in keys if k in metrics)


class Progress:
    """A rich progress bar with live loss and ETA on a terminal; one plain line per epoch otherwise."""

    # Read the running loss every this many steps: `.item()` is a host sync, so not every step.
    REFRESH_STEPS = 25

    def __init__(self, *, total_epochs: int, steps_per_epoch: int, enabled: bool = True):
        self.total_epochs = total_epochs
        self.steps_per_epoch = steps_per_epoch
        self.enabled = enabled
        self.tty = enabled and sys.stderr.isatty()
        self._progress = None
        self._task = None
        self._epoch_start = time.perf_counter()

    def on_epoch_start(self, trainer, epoch: int) -> None:
        self._epoch_start = time.perf_counter()
        if not self.tty:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn, TimeRemainingColumn

        self._progress = RichProgress(TextColumn(f"epoch {epoch + 1}/{self.total_epochs}"), BarColumn(),
                                      MofNCompleteColumn(), TextColumn("{task.fields[loss]}"), TimeRemainingColumn(),
                                      transient=True)
        self._progress.start()
        self._task = self._progress.add_task("train", total=self.steps_per_epoch, loss="")

    def on_step_end(self, trainer, step: int) -> bool:
        if self._progress is not None and (step + 1) % self.REFRESH_STEPS == 0:
            self._progress.update(self._task, completed=step + 1, loss=f"loss {trainer.running_loss():.4f}")
        return False

    def on_epoch_end(self, trainer, epoch: int, metrics: dict[str, float]) -> bool:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        if self.enabled:
            seconds = time.perf_counter() - self._epoch_start
            print(f"epoch {epoch + 1}/{self.total_epochs}  {format_metrics(metrics)}  lr {metrics.get('lr', 0):.2e}"
                  f"  {seconds:.1f}s", file=sys.stderr, flush=True)
        return False

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

