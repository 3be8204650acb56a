"""The progress display: a rich bar with live loss and ETA on a terminal, one plain line per epoch otherwise."""

from __future__ import annotations

import sys
import time

from dlforge.training.callbacks.base import Callback


def format_metrics(metrics: dict[str, float], keys=None) -> str:
    keys = keys or [k for k in metrics if k.startswith(("train.loss", "val.", "privacy."))]
    return "  ".join(f"{k} {metrics[k]:.4f}" for k in keys if k in metrics)


class Progress(Callback):
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

    def on_step_end(self, trainer, step: int) -> None:
        if self._progress is not None and (step + 1) % self.REFRESH_STEPS == 0:
            self._progress.update(self._task, completed=step + 1, loss=f"loss {trainer.running_loss():.4f}")

    def on_epoch_end(self, trainer, epoch: int, metrics: dict[str, float]) -> bool:
        self.close()
        if self.enabled:
            seconds = time.perf_counter() - self._epoch_start
            print(f"epoch {epoch + 1}/{self.total_epochs}  {format_metrics(metrics)}  lr {metrics.get('lr', 0):.2e}"
                  f"  {seconds:.1f}s", file=sys.stderr, flush=True)
        return False

    def on_fit_end(self, trainer, result) -> None:
        self.close()

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
