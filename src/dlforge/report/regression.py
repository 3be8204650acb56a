"""Regression plots as small inline SVG: predicted vs actual, residuals vs predicted, and r² per epoch on its own axis.

Why SVG written by hand: three scatter/line charts need no plotting library (matplotlib costs a second to import
and tens of MB), the files are a few KB, and the report embeds them as they are. Data in, path out.
Cost: at most `MAX_POINTS` points are drawn (an evenly spaced subset), so a 1M-row test set stays small.
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np

from dlforge.core.files import write_text

MAX_POINTS = 2000
W, H, PAD = 420, 320, 48  # canvas and margin (px)


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    return [lo + (hi - lo) * i / (n - 1) for i in range(n)]


def _fmt(v: float) -> str:
    return f"{v:.3g}"


def _frame(title: str, xlabel: str, ylabel: str, xr: tuple[float, float], yr: tuple[float, float], body: list[str]) -> str:
    """An SVG chart: axes with 5 ticks each, labels, title, then `body` (already in pixel coordinates)."""
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
             'font-family="sans-serif" font-size="11">',
             f'<rect width="{W}" height="{H}" fill="white"/>',
             f'<text x="{W / 2}" y="16" text-anchor="middle" font-size="13">{html.escape(title)}</text>',
             f'<line x1="{PAD}" y1="{H - PAD}" x2="{W - 10}" y2="{H - PAD}" stroke="black"/>',
             f'<line x1="{PAD}" y1="{H - PAD}" x2="{PAD}" y2="24" stroke="black"/>',
             f'<text x="{(PAD + W - 10) / 2}" y="{H - 8}" text-anchor="middle">{html.escape(xlabel)}</text>',
             f'<text x="12" y="{(H - PAD + 24) / 2}" text-anchor="middle" '
             f'transform="rotate(-90 12 {(H - PAD + 24) / 2})">{html.escape(ylabel)}</text>']
    for v in _ticks(*xr):
        px = _px(v, xr)
        parts.append(f'<text x="{px:.1f}" y="{H - PAD + 14}" text-anchor="middle">{_fmt(v)}</text>')
    for v in _ticks(*yr):
        py = _py(v, yr)
        parts.append(f'<line x1="{PAD}" y1="{py:.1f}" x2="{W - 10}" y2="{py:.1f}" stroke="#eee"/>')
        parts.append(f'<text x="{PAD - 4}" y="{py + 4:.1f}" text-anchor="end">{_fmt(v)}</text>')
    return "\n".join(parts + body + ["</svg>", ""])


def _px(v, xr):
    return PAD + (np.asarray(v, dtype=float) - xr[0]) / (xr[1] - xr[0]) * (W - 10 - PAD)


def _py(v, yr):
    return (H - PAD) - (np.asarray(v, dtype=float) - yr[0]) / (yr[1] - yr[0]) * (H - PAD - 24)


def _range(*arrays) -> tuple[float, float]:
    values = np.concatenate([np.asarray(a, dtype=float).ravel() for a in arrays])
    values = values[np.isfinite(values)]
    lo, hi = (float(values.min()), float(values.max())) if len(values) else (0.0, 1.0)
    pad = (hi - lo) * 0.05 or 1.0
    return lo - pad, hi + pad


def _subset(*arrays):
    n = len(arrays[0])
    keep = np.linspace(0, n - 1, MAX_POINTS).astype(int) if n > MAX_POINTS else slice(None)
    return [np.asarray(a, dtype=float)[keep] for a in arrays]


def _dots(x, y, xr, yr) -> list[str]:
    px, py = _px(x, xr), _py(y, yr)
    return [f'<circle cx="{a:.1f}" cy="{b:.1f}" r="2" fill="#1f77b4" fill-opacity="0.5"/>'
            for a, b in zip(px, py) if np.isfinite(a) and np.isfinite(b)]


def plot_predicted_vs_actual(actual, predicted, path: Path, *, target: str = "target", split: str = "test") -> Path:
    """Each row as a dot at (actual, predicted), with the diagonal a perfect model would sit on."""
    actual, predicted = _subset(actual, predicted)
    r = _range(actual, predicted)
    diagonal = (f'<line x1="{_px(r[0], r):.1f}" y1="{_py(r[0], r):.1f}" x2="{_px(r[1], r):.1f}" '
                f'y2="{_py(r[1], r):.1f}" stroke="#d62728" stroke-dasharray="4 3"/>')
    svg = _frame(f"predicted vs actual ({split})", f"actual {target}", f"predicted {target}", r, r,
                 [diagonal, *_dots(actual, predicted, r, r)])
    write_text(Path(path), svg)
    return Path(path)


def plot_residuals(actual, predicted, path: Path, *, target: str = "target", split: str = "test") -> Path:
    """Residual (actual - predicted) against the prediction: a funnel or a curve shows what the model misses."""
    actual, predicted = _subset(actual, predicted)
    residual = actual - predicted
    xr, yr = _range(predicted), _range(residual, [0.0])
    zero = f'<line x1="{PAD}" y1="{_py(0, yr):.1f}" x2="{W - 10}" y2="{_py(0, yr):.1f}" stroke="#d62728"/>'
    svg = _frame(f"residuals ({split})", f"predicted {target}", "actual - predicted", xr, yr,
                 [zero, *_dots(predicted, residual, xr, yr)])
    write_text(Path(path), svg)
    return Path(path)


def plot_metric(history: list[dict], key: str, path: Path) -> Path | None:
    """One logged metric per epoch on its own axis (r² is unitless: beside an error in dollars it is a flat line)."""
    points = [(row["epoch"], row[key]) for row in history if isinstance(row.get(key), (int, float))
              and np.isfinite(row[key])]
    if not points:
        return None
    epochs, values = zip(*points)
    xr = (min(epochs) - 0.5, max(epochs) + 0.5)
    yr = _range(values)
    xs, ys = _px(epochs, xr), _py(values, yr)
    line = '<polyline fill="none" stroke="#1f77b4" stroke-width="2" points="' + \
        " ".join(f"{a:.1f},{b:.1f}" for a, b in zip(xs, ys)) + '"/>'
    write_text(Path(path), _frame(key, "epoch", key, xr, yr, [line, *_dots(epochs, values, xr, yr)]))
    return Path(path)
