"""The learning-rate range test (Smith 2017; fastai's lr_find): raise the rate exponentially over a few
hundred steps of real training, watch the smoothed loss, and suggest the rate where it falls fastest.

It trains a throw-away copy of the model through the trainer's own step (same augmentation, mixing,
precision, clipping), so what it measures is what training will do. `optimizer.lr: auto` runs it
before training and uses the suggestion; `dlforge lr-find RECIPE` prints it and saves the plot
(`workflows/lr_find.py` builds the throw-away model and trainer; this file is the test itself).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from dlforge.core.files import atomic_path

SMOOTHING = 0.98  # EMA factor of the loss, with bias correction (as fastai)
DIVERGED = 4.0  # stop once the smoothed loss exceeds this multiple of its minimum


@dataclass
class LRFindResult:
    lrs: list[float]
    losses: list[float]  # smoothed
    suggestion: float
    min_loss_lr: float
    stopped_early: bool
    plot: Path | None = None
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"suggestion": self.suggestion, "min_loss_lr": self.min_loss_lr, "steps": len(self.lrs),
                "stopped_early": self.stopped_early, "plot": str(self.plot) if self.plot else None}


def suggest(lrs: np.ndarray, smoothed: np.ndarray) -> tuple[float, float]:
    """(steepest-descent rate before the minimum, rate at the minimum)."""
    best = int(np.argmin(smoothed))
    min_lr = float(lrs[best])
    if best < 3:
        return min_lr / 10, min_lr
    slope = np.gradient(smoothed[: best + 1], np.log10(lrs[: best + 1]))
    # Skip the first tenth: the EMA has barely moved there and its slope is noise.
    start = max(1, best // 10)
    steepest = start + int(np.argmin(slope[start:]))
    return float(lrs[steepest]), min_lr


def range_test(trainer, *, start_lr: float = 1e-7, end_lr: float = 10.0, steps: int = 200) -> LRFindResult:
    """Run the test on `trainer` (its model and optimizer are consumed: build a fresh one for training)."""
    from dlforge.data.batches import epoch_batches

    base = [g["lr"] for g in trainer.optimizer.param_groups]
    top = max(base)
    multipliers = [b / top for b in base]  # discriminative LR groups keep their ratios
    trainer.model.train()
    lrs, raw = [], []
    losses = []
    smoothed, best, stopped = 0.0, math.inf, False
    step = 0
    while step < steps and not stopped:
        permutation = trainer.batches.permutation()
        for x, y in epoch_batches(trainer.train, trainer.batches.slices(permutation), workers=0):
            lr = start_lr * (end_lr / start_lr) ** (step / max(1, steps - 1))
            for group, mult in zip(trainer.optimizer.param_groups, multipliers):
                group["lr"] = lr * mult
            trainer.schedule.per_step = False  # the range test owns the rate; no schedule in between
            raw.append(trainer.step(x, y))
            lrs.append(lr)
            step += 1
            if step % 10 == 0 or step == steps:  # one host sync per 10 steps to check for divergence
                for value in torch.stack(raw[len(losses):]).float().tolist():
                    value = value if math.isfinite(value) else float("inf")
                    smoothed = SMOOTHING * smoothed + (1 - SMOOTHING) * value
                    corrected = smoothed / (1 - SMOOTHING ** (len(losses) + 1))
                    losses.append(corrected)
                    best = min(best, corrected)
                if losses[-1] > DIVERGED * best or not math.isfinite(losses[-1]):
                    stopped = True
            if stopped or step >= steps:
                break
    lrs = lrs[: len(losses)]
    finite = np.isfinite(losses)
    suggestion, min_lr = suggest(np.array(lrs)[finite], np.array(losses)[finite])
    return LRFindResult(lrs, losses, suggestion, min_lr, stopped)


def plot_range_test(result: LRFindResult, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(result.lrs, result.losses)
    ax.set_xscale("log")
    ax.axvline(result.suggestion, color="tab:red", linestyle="--", label=f"suggestion {result.suggestion:.2e}")
    finite = [v for v in result.losses if math.isfinite(v)]
    if finite:
        ax.set_ylim(min(finite) * 0.95, min(max(finite), DIVERGED * min(finite)) * 1.05)
    ax.set_xlabel("learning rate")
    ax.set_ylabel("smoothed training loss")
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    result.plot = path
    return path
