"""Small SVG charts (lines, scatter plots, bubbles, heatmaps) for run reports: text in, text out, no plotting library.

The report needs three kinds of chart (curves per epoch, a confusion matrix, the LR range test). matplotlib
drew them as PNGs for ~65 MB of install and about a second of import; these are a few kilobytes of
vector text that report.html inlines, so the page is one self-contained file that scales on any screen.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence

WIDTH, HEIGHT = 600, 360
LEFT, RIGHT, TOP, BOTTOM = 64, 16, 36, 48  # margins: room for tick labels, the title and the axis label
COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf")  # matplotlib's tab10, so charts read the same as the PNGs they replace
FAMILY = "font-family='system-ui,sans-serif'"
FONT = f"{FAMILY} font-size='12'"


def _fmt(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1e4 or abs(value) < 1e-3:
        return f"{value:.0e}"
    return f"{value:.4g}"


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values covering [low, high] (1-2-5 steps)."""
    if high <= low:
        return [low]
    raw = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    first = math.ceil(low / step) * step
    return [first + i * step for i in range(int((high - first) / step + 1e-9) + 1)]


def _svg(body: str, title: str, width: int = WIDTH, height: int = HEIGHT) -> str:
    return (f"<svg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 {width} {height}' width='{width}' "
            f"height='{height}' role='img' aria-label='{html.escape(title, quote=True)}'>"
            f"<rect width='100%' height='100%' fill='white'/>"
            f"<text x='{width / 2}' y='20' text-anchor='middle' {FAMILY} font-size='14'>{html.escape(title)}</text>"
            f"{body}</svg>\n")


def _axes(xs: list[float], ys: list[float], *, xlabel: str, ylabel: str, log_x: bool = False,
          ylim: tuple[float, float] | None = None):
    """Scales and axes for these values: (px, py, parts), px/py mapping data to pixels (y clipped to the axis)."""
    fx = (lambda v: math.log10(v)) if log_x else (lambda v: v)
    x0, x1 = min(map(fx, xs)), max(map(fx, xs))
    y0, y1 = ylim if ylim else (min(ys), max(ys))
    if x1 == x0:
        x0, x1 = x0 - 0.5, x1 + 0.5
    if y1 == y0:
        y0, y1 = y0 - (abs(y0) * 0.05 or 0.5), y1 + (abs(y1) * 0.05 or 0.5)
    pad = (y1 - y0) * 0.05
    y0, y1 = y0 - pad, y1 + pad
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    px = lambda v: LEFT + (fx(v) - x0) / (x1 - x0) * plot_w
    py = lambda v: TOP + (1 - (min(max(v, y0), y1) - y0) / (y1 - y0)) * plot_h

    parts = [f"<rect x='{LEFT}' y='{TOP}' width='{plot_w}' height='{plot_h}' fill='none' stroke='#888'/>"]
    for tick in _ticks(y0, y1):
        y = py(tick)
        parts.append(f"<line x1='{LEFT}' x2='{LEFT + plot_w}' y1='{y:.1f}' y2='{y:.1f}' stroke='#ddd'/>"
                     f"<text x='{LEFT - 6}' y='{y + 4:.1f}' text-anchor='end' {FONT}>{_fmt(tick)}</text>")
    x_ticks = [10.0 ** e for e in range(math.ceil(x0), math.floor(x1) + 1)] if log_x else _ticks(x0, x1)
    for tick in x_ticks:
        x = px(tick)
        parts.append(f"<line x1='{x:.1f}' x2='{x:.1f}' y1='{TOP}' y2='{TOP + plot_h}' stroke='#eee'/>"
                     f"<text x='{x:.1f}' y='{TOP + plot_h + 16}' text-anchor='middle' {FONT}>{_fmt(tick)}</text>")
    parts.append(f"<text x='{LEFT + plot_w / 2}' y='{HEIGHT - 8}' text-anchor='middle' {FONT}>"
                 f"{html.escape(xlabel)}</text>")
    if ylabel:
        parts.append(f"<text transform='translate(14 {TOP + plot_h / 2}) rotate(-90)' text-anchor='middle' {FONT}>"
                     f"{html.escape(ylabel)}</text>")
    return px, py, parts


def _legend(entries: list[tuple[str, str]]) -> list[str]:
    """(label, colour) rows in the top-right corner, on a translucent box so curves under it stay readable."""
    if not entries:
        return []
    right = WIDTH - RIGHT
    parts = [f"<rect x='{right - 156}' y='{TOP + 2}' width='152' height='{16 * len(entries) + 4}' "
             f"fill='white' fill-opacity='0.85' stroke='#ccc'/>"]
    for i, (name, colour) in enumerate(entries):
        y = TOP + 14 + 16 * i
        parts.append(f"<line x1='{right - 150}' x2='{right - 130}' y1='{y - 4}' y2='{y - 4}' stroke='{colour}' "
                     f"stroke-width='2'/><text x='{right - 124}' y='{y}' {FONT}>{html.escape(name)}</text>")
    return parts


def _empty(title: str) -> str:
    return _svg(f"<text x='{WIDTH / 2}' y='{HEIGHT / 2}' text-anchor='middle' {FONT}>no finite values</text>", title)


def line_chart(series: dict[str, tuple[Sequence[float], Sequence[float | None]]], *, title: str, xlabel: str = "",
               ylabel: str = "", log_x: bool = False, marker: bool = True, vline: tuple[float, str] | None = None,
               ylim: tuple[float, float] | None = None) -> str:
    """One chart of named (x, y) series; None and non-finite y values leave a gap. `vline` = (x, label)."""
    points = {name: [(x, y) for x, y in zip(xs, ys) if y is not None and math.isfinite(y)
                     and (not log_x or x > 0)] for name, (xs, ys) in series.items()}
    xs_all = [x for pts in points.values() for x, _ in pts] + ([vline[0]] if vline else [])
    ys_all = [y for pts in points.values() for _, y in pts]
    if not xs_all or not ys_all:
        return _empty(title)
    px, py, parts = _axes(xs_all, ys_all, xlabel=xlabel, ylabel=ylabel, log_x=log_x, ylim=ylim)
    if vline:
        x = px(vline[0])
        parts.append(f"<line x1='{x:.1f}' x2='{x:.1f}' y1='{TOP}' y2='{HEIGHT - BOTTOM}' stroke='#d62728' "
                     f"stroke-dasharray='5 4'/>")
    legend = []
    for i, (name, pts) in enumerate(points.items()):
        colour = COLOURS[i % len(COLOURS)]
        legend.append((name, colour))
        path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in pts)
        parts.append(f"<polyline points='{path}' fill='none' stroke='{colour}' stroke-width='1.8'>"
                     f"<title>{html.escape(name)}</title></polyline>")
        if marker and len(pts) <= 60:
            parts.extend(f"<circle cx='{px(x):.1f}' cy='{py(y):.1f}' r='3' fill='{colour}'>"
                         f"<title>{html.escape(name)}: {_fmt(y)}</title></circle>" for x, y in pts)
    if vline:
        legend.append((vline[1], "#d62728"))
    return _svg("".join(parts + _legend(legend)), title)


def scatter_chart(xs: Sequence[float], ys: Sequence[float], *, title: str, xlabel: str = "", ylabel: str = "",
                  reference: str | None = None) -> str:
    """One dot per (x, y) pair (non-finite pairs left out). `reference`: 'diagonal' draws y = x on equal axes (a
    perfect prediction), 'zero' the line y = 0 (no residual)."""
    pairs = [(x, y) for x, y in zip(xs, ys) if math.isfinite(x) and math.isfinite(y)]
    if not pairs:
        return _empty(title)
    px_all, py_all = [x for x, _ in pairs], [y for _, y in pairs]
    if reference == "diagonal":  # equal ranges on both axes, so the diagonal is the 45-degree line
        px_all = py_all = px_all + py_all
    elif reference == "zero":
        py_all = py_all + [0.0]
    px, py, parts = _axes(px_all, py_all, xlabel=xlabel, ylabel=ylabel,
                          ylim=(min(py_all), max(py_all)) if reference == "diagonal" else None)
    if reference == "diagonal":
        low, high = min(px_all), max(px_all)
        parts.append(f"<line x1='{px(low):.1f}' y1='{py(low):.1f}' x2='{px(high):.1f}' y2='{py(high):.1f}' "
                     f"stroke='#d62728' stroke-dasharray='4 3'/>")
    elif reference == "zero":
        parts.append(f"<line x1='{LEFT}' x2='{WIDTH - RIGHT}' y1='{py(0.0):.1f}' y2='{py(0.0):.1f}' stroke='#d62728'/>")
    parts.extend(f"<circle cx='{px(x):.1f}' cy='{py(y):.1f}' r='2' fill='{COLOURS[0]}' fill-opacity='0.5'/>"
                 for x, y in pairs)
    return _svg("".join(parts), title)


def bubble_chart(points: Sequence[tuple[float, float, float, str, bool]], *, title: str, xlabel: str = "",
                 ylabel: str = "", log_x: bool = False, vline: float | None = None, hline: float | None = None) -> str:
    """One labelled bubble per (x, y, size, label, highlighted) point, its area proportional to `size`; highlighted
    points (e.g. a Pareto set) are filled, the others hollow. `vline`/`hline`: dashed limits (budgets)."""
    pts = [p for p in points if math.isfinite(p[0]) and math.isfinite(p[1]) and (not log_x or p[0] > 0)]
    if not pts:
        return _empty(title)
    xs = [p[0] for p in pts] + ([vline] if vline is not None and (not log_x or vline > 0) else [])
    ys = [p[1] for p in pts] + ([hline] if hline is not None else [])
    px, py, parts = _axes(xs, ys, xlabel=xlabel, ylabel=ylabel, log_x=log_x)
    if vline is not None and (not log_x or vline > 0):
        parts.append(f"<line x1='{px(vline):.1f}' x2='{px(vline):.1f}' y1='{TOP}' y2='{HEIGHT - BOTTOM}' "
                     f"stroke='#d62728' stroke-dasharray='5 4'/>")
    if hline is not None:
        parts.append(f"<line x1='{LEFT}' x2='{WIDTH - RIGHT}' y1='{py(hline):.1f}' y2='{py(hline):.1f}' "
                     f"stroke='#d62728' stroke-dasharray='5 4'/>")
    largest = max((p[2] for p in pts), default=1.0) or 1.0
    for i, (x, y, size, label, highlighted) in enumerate(pts):
        radius = 4 + 14 * math.sqrt(max(size, 0.0) / largest)  # area proportional to size
        colour = COLOURS[i % len(COLOURS)]
        fill = f"fill='{colour}' fill-opacity='0.45'" if highlighted else "fill='none'"
        parts.append(f"<circle cx='{px(x):.1f}' cy='{py(y):.1f}' r='{radius:.1f}' {fill} stroke='{colour}'>"
                     f"<title>{html.escape(label)}: {_fmt(x)}, {_fmt(y)}</title></circle>"
                     f"<text x='{px(x) + radius + 2:.1f}' y='{py(y) + 4:.1f}' {FAMILY} font-size='10'>"
                     f"{html.escape(label)}</text>")
    return _svg("".join(parts), title)


def heatmap(matrix: Sequence[Sequence[float]], labels: Sequence[str], *, title: str, xlabel: str = "predicted",
            ylabel: str = "true") -> str:
    """A square count matrix in shades of blue, counts written in the cells up to 20 classes."""
    n = len(labels)
    cell = max(12, min(48, 480 // max(n, 1)))
    left, top = 40 + 7 * max((len(str(label)) for label in labels), default=1), 36
    size = cell * n
    width, height = left + size + 20, top + size + 40 + 7 * max((len(str(label)) for label in labels), default=1)
    peak = max((max(row) for row in matrix), default=0) or 1
    parts = []
    for i, row in enumerate(matrix):
        for j, value in enumerate(row):
            share = value / peak
            shade = f"rgb({int(247 - 239 * share)},{int(251 - 203 * share)},{int(255 - 148 * share)})"
            parts.append(f"<rect x='{left + j * cell}' y='{top + i * cell}' width='{cell}' height='{cell}' "
                         f"fill='{shade}'><title>true {html.escape(str(labels[i]))}, predicted "
                         f"{html.escape(str(labels[j]))}: {value}</title></rect>")
            if n <= 20:
                colour = "white" if share > 0.5 else "black"
                parts.append(f"<text x='{left + (j + 0.5) * cell}' y='{top + (i + 0.5) * cell + 4}' "
                             f"text-anchor='middle' fill='{colour}' {FAMILY} font-size='{min(12, cell // 3 + 2)}'>"
                             f"{value}</text>")
    for k, label in enumerate(labels):
        text = html.escape(str(label))
        parts.append(f"<text x='{left - 6}' y='{top + (k + 0.5) * cell + 4}' text-anchor='end' {FONT}>{text}</text>")
        x = left + (k + 0.5) * cell
        parts.append(f"<text transform='translate({x} {top + size + 12}) rotate(45)' {FONT}>{text}</text>")
    parts.append(f"<text x='{left + size / 2}' y='{height - 6}' text-anchor='middle' {FONT}>{html.escape(xlabel)}</text>"
                 f"<text transform='translate(14 {top + size / 2}) rotate(-90)' text-anchor='middle' {FONT}>"
                 f"{html.escape(ylabel)}</text>")
    return _svg("".join(parts), title, width, height)


def bar_chart(values: dict[str, float], *, title: str, xlabel: str = "", limit: int = 30) -> str:
    """Horizontal bars, one per label in the given order (the first `limit`), the value written beside each."""
    items = [(str(k), float(v)) for k, v in list(values.items())[:limit] if math.isfinite(float(v))]
    if not items:
        return _empty(title)
    label_w = min(220, 16 + 7 * max(len(k) for k, _ in items))
    bar_h, width = 18, WIDTH
    height = TOP + bar_h * len(items) + BOTTOM
    peak = max(v for _, v in items) or 1.0
    plot_w = width - label_w - RIGHT - 60
    parts = []
    for i, (name, value) in enumerate(items):
        y = TOP + i * bar_h
        w = max(0.0, value / peak * plot_w)
        text = f"{value:,.0f}" if value == int(value) else _fmt(value)  # counts in full: 24,720, not 2e+04
        parts.append(f"<text x='{label_w - 6}' y='{y + 13}' text-anchor='end' {FONT}>{html.escape(name[:30])}</text>"
                     f"<rect x='{label_w}' y='{y + 2}' width='{w:.1f}' height='{bar_h - 4}' fill='{COLOURS[0]}'>"
                     f"<title>{html.escape(name)}: {text}</title></rect>"
                     f"<text x='{label_w + w + 4:.1f}' y='{y + 13}' {FONT}>{text}</text>")
    parts.append(f"<text x='{label_w + plot_w / 2}' y='{height - 12}' text-anchor='middle' {FONT}>"
                 f"{html.escape(xlabel)}</text>")
    return _svg("".join(parts), title, width, height)
