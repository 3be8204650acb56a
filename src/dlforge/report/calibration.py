"""The reliability diagram: accuracy against confidence per bin, before (and after) temperature scaling."""

from __future__ import annotations

from pathlib import Path

from dlforge.report.plots import save_svg
from dlforge.report.svg import line_chart


def _points(bins: dict) -> tuple[list[float], list[float | None]]:
    pairs = [(c, a) for c, a in zip(bins["confidence"], bins["accuracy"]) if c is not None]
    return [c for c, _ in pairs], [a for _, a in pairs]


def plot_reliability(before: dict, after: dict | None, path: Path, *, split: str = "test") -> Path:
    """`before`/`after`: `evaluation.calibration.reliability` results. A perfectly calibrated model lies on the
    diagonal; points below it are over-confident bins. The legend carries each curve's ECE in percent."""
    series = {"perfect": ([0.0, 1.0], [0.0, 1.0])}
    series[f"model, ECE {100 * before['ece']:.2f}%"] = _points(before)
    if after is not None:
        series[f"scaled, ECE {100 * after['ece']:.2f}%"] = _points(after)
    svg = line_chart(series, title=f"reliability diagram ({split})", xlabel="confidence (mean per bin)",
                     ylabel="accuracy", ylim=(0.0, 1.0))
    return save_svg(path, svg)


__all__ = ["plot_reliability"]
