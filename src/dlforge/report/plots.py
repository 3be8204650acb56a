"""The charts of a run, as SVG files in `plots/`: loss curves, metric curves, confusion matrices, the LR range test.

Each function takes plain numbers and a path and returns the path written (atomically); `report.html` inlines them.
"""

from __future__ import annotations

import math
from pathlib import Path

from dlforge.core.errors import DlforgeError
from dlforge.core.files import write_text
from dlforge.report.svg import heatmap, line_chart
from dlforge.training.lr_find import DIVERGED

# Metrics measured in the target's own units (dollars, seconds...): drawn on an axis of their own, never beside
# accuracy or r² (a flat line on a dollar axis tells nothing).
UNIT_METRICS = ("mae", "mse", "rmse", "mape", "msle", "rmsle")


def check_plot_path(path: str | Path) -> Path:
    path = Path(path)
    if path.suffix.lower() != ".svg":
        raise DlforgeError(f"plots are written as SVG; got the file name {path.name!r}", where=str(path),
                           hint=f"use a name ending in .svg, e.g. {path.with_suffix('.svg').name}")
    return path


def save_svg(path: Path, svg: str) -> Path:
    """Write a chart (atomically); the path must end in .svg."""
    path = check_plot_path(path)
    write_text(path, svg)
    return path


def _in_units(key: str) -> bool:
    return key.rsplit(".", 1)[-1].split("_")[0] in UNIT_METRICS


def _own_axis(key: str) -> bool:
    """r² is unit-free but unbounded below (hugely negative in early epochs): beside accuracy it flattens it."""
    return key.rsplit(".", 1)[-1] == "r2"


def plot_curves(history: list[dict], folder: Path) -> list[Path]:
    """loss.svg (train and validation loss), metrics.svg (unit-free validation metrics), errors.svg (validation
    errors in the target's units) and one chart per r² (`val.r2.svg`), each only when there is something to draw."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if not history:
        return []
    epochs = [row["epoch"] for row in history]
    keys = list(dict.fromkeys(k for row in history for k in row))
    validation = [k for k in keys if k.startswith("val.") and not k.endswith("loss")]
    groups = [("loss", [k for k in keys if k.endswith("loss")], "loss.svg"),
              ("validation metrics", [k for k in validation if not _in_units(k) and not _own_axis(k)], "metrics.svg"),
              ("validation error (target units)", [k for k in validation if _in_units(k)], "errors.svg")]
    groups += [(k, [k], f"{k}.svg") for k in validation if _own_axis(k)]
    written = []
    for title, group, filename in groups:
        if group:
            series = {k: (epochs, [_number(row.get(k)) for row in history]) for k in group}
            written.append(save_svg(folder / filename, line_chart(series, title=title, xlabel="epoch")))
    return written


def _number(value) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def plot_confusion(matrix: list[list[int]], labels: list[str], path: Path, title: str = "confusion matrix (test)") -> Path:
    return save_svg(path, heatmap(matrix, [str(label) for label in labels], title=title))


def plot_range_test(result, path: Path) -> Path:
    """The LR range test's smoothed loss against the rate (log axis), the suggestion marked; sets `result.plot`."""
    finite = [v for v in result.losses if math.isfinite(v)]
    ylim = (min(finite) * 0.95, min(max(finite), DIVERGED * min(finite)) * 1.05) if finite else None
    svg = line_chart({"smoothed training loss": (result.lrs, result.losses)}, title="learning-rate range test",
                     xlabel="learning rate", ylabel="smoothed training loss", log_x=True, marker=False,
                     vline=(result.suggestion, f"suggestion {result.suggestion:.2e}"), ylim=ylim)
    result.plot = save_svg(path, svg)
    return result.plot
