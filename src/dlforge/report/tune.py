"""The charts of a hyperparameter search (`dlforge tune`), as SVG: optimisation history and parameter importance.

SVG like every other chart of dlforge (report/svg.py: no plotting library; a few kilobytes that any browser and
Markdown viewer shows). Each function takes plain numbers and a path and returns the path written (atomically).
"""

from __future__ import annotations

from pathlib import Path

from dlforge.report.plots import save_svg
from dlforge.report.svg import bar_chart, line_chart


def plot_history(values: list[tuple[int, float]], path: Path, *, metric: str, maximize: bool,
                 pruned: list[int] = ()) -> Path:
    """Each completed trial's value (dots, by trial number) and the best so far (a step line)."""
    values = sorted(values)
    numbers = [n for n, _ in values]
    best, running = [], None
    for _, value in values:
        running = value if running is None else (max(running, value) if maximize else min(running, value))
        best.append(running)
    series = {f"trial {metric}": (numbers, [v for _, v in values]), "best so far": (numbers, best)}
    title = f"Optimisation history ({len(values)} completed" + (f", {len(pruned)} pruned)" if pruned else ")")
    return save_svg(Path(path), line_chart(series, title=title, xlabel="trial", ylabel=metric))


def plot_importance(importances: dict[str, float], path: Path, *, note: str = "") -> Path:
    """One bar per parameter, largest first (fANOVA: the share of the metric's variance each explains)."""
    title = "Parameter importance (fANOVA)" + (f": {note}" if note and not importances else "")
    return save_svg(Path(path), bar_chart(dict(importances), title=title, xlabel="share of the metric's variance"))


__all__ = ["plot_history", "plot_importance"]
