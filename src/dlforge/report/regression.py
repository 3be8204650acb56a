"""Regression charts: predicted vs actual and residuals vs predicted, on the test split, in the target's units.

At most `MAX_POINTS` rows are drawn (an evenly spaced subset), so a 1M-row test set still makes a small file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dlforge.report.plots import save_svg
from dlforge.report.svg import scatter_chart

MAX_POINTS = 2000


def _subset(*arrays) -> list[np.ndarray]:
    n = len(arrays[0])
    keep = np.linspace(0, n - 1, MAX_POINTS).astype(int) if n > MAX_POINTS else slice(None)
    return [np.asarray(a, dtype=float)[keep] for a in arrays]


def plot_predicted_vs_actual(actual, predicted, path: Path, *, target: str = "target", split: str = "test") -> Path:
    """Each row as a dot at (actual, predicted), with the diagonal a perfect model would sit on."""
    actual, predicted = _subset(actual, predicted)
    return save_svg(path, scatter_chart(actual, predicted, title=f"predicted vs actual ({split})",
                                        xlabel=f"actual {target}", ylabel=f"predicted {target}", reference="diagonal"))


def plot_residuals(actual, predicted, path: Path, *, target: str = "target", split: str = "test") -> Path:
    """Residual (actual - predicted) against the prediction: a funnel or a curve shows what the model misses."""
    actual, predicted = _subset(actual, predicted)
    return save_svg(path, scatter_chart(predicted, actual - predicted, title=f"residuals ({split})",
                                        xlabel=f"predicted {target}", ylabel="actual - predicted", reference="zero"))
