"""`RUN/compress/report.md`, `pareto.png` and `pareto.svg`: what the search tried, measured, kept, and why.

The Pareto plot is a PNG (issue #13 asks for one: it pastes into a slide, a ticket or a chat that shows no SVG),
drawn with matplotlib's Agg canvas (a bare Figure: no pyplot, the user's backend untouched), imported only here and only when the search writes its report (matplotlib is in
the `compress` extra; the core install stays without it). The same plot is also written as SVG by the project's own
chart module (report/svg.py): a few kilobytes, no dependency. Without matplotlib the PNG is left out and report.md
says so and links the SVG.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from dlforge.core.files import write_text
from dlforge.core.machine import cpu_model
from dlforge.recipe.training import higher_is_better
from dlforge.report.plots import save_svg
from dlforge.report.svg import bubble_chart


def _metric_limit(result, budgets) -> float | None:
    """The lowest (highest, for an error) metric the accuracy budget allows."""
    if budgets.max_accuracy_drop is None:
        return None
    return result.reference + (-1 if higher_is_better(result.metric_name) else 1) * budgets.max_accuracy_drop


def write_pareto_svg(path: Path, result, budgets) -> Path:
    points = _pareto_points(result)
    limit = _metric_limit(result, budgets)
    svg = bubble_chart(points, title=f"candidates: {result.metric_name} vs p50 latency (area: file size; filled: Pareto)",
                       xlabel="p50 latency at batch 1 (ms)", ylabel=f"test {result.metric_name}",
                       vline=budgets.max_latency_ms, hline=limit)
    return save_svg(path, svg)


def _pareto_points(result):
    return [(e.measurement.p50_ms, e.measurement.metric, e.measurement.size_bytes, e.candidate.name, e.pareto)
            for e in result.entries]


def write_pareto_png(path: Path, result, budgets) -> Path | None:
    """The Pareto plot as PNG (matplotlib, Agg): metric vs p50 latency, marker area proportional to file size,
    Pareto candidates filled, the budgets dashed. None when matplotlib is not installed (the SVG stands alone)."""
    try:
        import matplotlib
        from matplotlib.figure import Figure  # a bare Figure saves through the Agg canvas: no backend switch, no GUI
    except ImportError:
        return None
    points = [p for p in _pareto_points(result) if math.isfinite(p[0]) and math.isfinite(p[1])]
    limit = _metric_limit(result, budgets)
    figure = Figure(figsize=(7.5, 4.8), dpi=100)  # a Figure, not pyplot: no global state, nothing to close
    axes = figure.subplots()
    largest = max((p[2] for p in points), default=1) or 1
    colours = matplotlib.colormaps["tab10"].colors
    for i, (x, y, size, name, front) in enumerate(points):
        colour = colours[i % len(colours)]
        area = 30 + 900 * max(size, 0) / largest  # points^2: area proportional to the file size
        axes.scatter([x], [y], s=area, facecolors=colour if front else "none", edgecolors=colour,
                     alpha=0.6 if front else 1.0, linewidths=1.5)
        # Candidates often sit close together (fp32 ORT and int8 within 0.02 ms): stagger the labels vertically.
        axes.annotate(name, (x, y), xytext=(7, 4 - 11 * (i % 3)), textcoords="offset points", fontsize=8)
    if budgets.max_latency_ms is not None:
        axes.axvline(budgets.max_latency_ms, color="#d62728", linestyle="--", linewidth=1, label="latency budget")
    if limit is not None:
        axes.axhline(limit, color="#d62728", linestyle=":", linewidth=1, label="accuracy budget")
    if budgets.max_latency_ms is not None or limit is not None:
        axes.legend(loc="best", fontsize=8)
    axes.set_xlabel("p50 latency at batch 1 (ms)")
    axes.set_ylabel(f"test {result.metric_name}")
    axes.set_title(f"candidates: {result.metric_name} vs p50 latency (area: file size; filled: Pareto)", fontsize=10)
    axes.grid(True, alpha=0.3)
    axes.margins(x=0.12, y=0.08)  # room for the labels right of the rightmost bubbles
    figure.tight_layout()
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    figure.savefig(tmp, format="png")
    tmp.replace(path)  # atomic, as write_text: a reader never sees half a PNG
    return path


def describe_candidate(notes: dict) -> str:
    """One line on what a candidate is, from the notes its passes left: pruning ratio, student, int8 layers and which
    stayed fp32 and why (the fallback, the quantizer's unsupported ops, the measured input layer)."""
    parts = []
    if "ratio" in notes:
        parts.append(f"{notes['ratio']:.0%} of channels pruned in {notes.get('steps', 1)} step(s), "
                     f"{notes.get('finetune_epochs', 0)} fine-tune epoch(s) each")
    if "student" in notes:
        parts.append(f"student {Path(str(notes['student'])).name} distilled at T={notes.get('temperature')}, "
                     f"alpha={notes.get('alpha')}")
    if "export" in notes:
        parity = notes["export"].get("parity") or {}
        parts.append(f"ONNX ({notes['export'].get('exporter')}, opset {notes['export'].get('opset')}; parity max abs "
                     f"diff {parity.get('max_abs_diff', float('nan')):.2g})")
    q = notes.get("quantization")
    if q:
        line = f"int8 {q.get('mode')}: {q.get('int8_layers')} layer(s) int8, {q.get('fp32_layers')} fp32"
        kept = [f"{f['node']} ({f['op']}) lost too much" for f in q.get("fallback") or []]
        by_reason: dict[str, list[str]] = {}  # the quantizer's reason (no int8 kernel in this mode, or slower)
        for u in q.get("unsupported") or []:
            by_reason.setdefault(str(u.get("reason", "not quantized in this mode")).removesuffix(": kept fp32"),
                                 []).append(f"{u['node']} ({u['op']})")
        kept += [f"{', '.join(nodes)}: {reason}" for reason, nodes in by_reason.items()]
        placement = q.get("input_layer")
        if placement and placement.get("fp32"):
            kept.append(f"{placement['nodes'][0]} (input layer) faster in fp32")
        if kept:
            line += " (" + "; ".join(kept) + ")"
        if placement:
            ms = placement["ms_batch1"]
            line += (f"; input layer at batch 1: {ms['input_fp32']:.3f} ms fp32 against {ms['all_int8']:.3f} ms int8")
        parts.append(line)
    return "; ".join(parts) or "the run itself"


def write_search_report(out: Path, result, *, budgets, objective: str, closest, strategy: str) -> Path:
    out = Path(out)
    write_pareto_svg(out / "pareto.svg", result, budgets)
    png = write_pareto_png(out / "pareto.png", result, budgets)
    if png is None:
        (out / "pareto.png").unlink(missing_ok=True)  # a PNG of an earlier search would not show this one
    threads = result.entries[0].measurement.threads if result.entries else torch.get_num_threads()
    lines = [f"# dlforge compress: {result.metric_name} vs latency vs size", "",
             f"Budgets: accuracy drop <= {budgets.max_accuracy_drop}, p50 latency <= {budgets.max_latency_ms} ms, "
             f"size <= {budgets.max_size_mb} MB (None: no limit). Objective among those that meet them: lowest "
             f"{'p50 latency' if objective == 'latency' else 'file size'}.",
             f"Reference (the run itself, fp32 torch): {result.metric_name} {result.reference:.4f} on the test split.",
             f"Machine: {cpu_model()}, torch {torch.__version__}, {torch.backends.cpu.get_cpu_capability()}; torch "
             f"intra-op threads {threads} for every measurement. Search wall time {result.seconds:.1f} s.", ""]
    if result.best is not None:
        kept = f"kept as `{result.kept}`" if result.kept else "the run itself (nothing to keep)"
        lines += [f"**Best candidate meeting every budget: `{result.best.candidate.name}`** ({kept}).", ""]
    else:
        lines += [f"**No candidate meets every budget.** The closest, `{closest.candidate.name}`, misses: " +
                  "; ".join(f"{b}: {v:.4g} vs {limit:.4g}" for b, (v, limit) in closest.misses.items()) +
                  f". The Pareto set is kept in `{out / 'pareto'}`.", ""]
    if result.stopped_early:
        lines += [f"Early exit: {result.stopped_early}.", ""]
    lines += ["| candidate | runtime | stage | " + result.metric_name + " | drop | p50 ms | p95 ms | rows/s @64 | MB | "
              "build s | budgets | Pareto |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for e in result.entries:
        m = e.measurement
        drop = (result.reference - m.metric) * (1 if higher_is_better(result.metric_name) else -1)
        lines.append(f"| {e.candidate.name} | {m.runtime} | {e.stage} | {m.metric:.4f} | {drop:+.4f} | {m.p50_ms:.3f} "
                     f"| {m.p95_ms:.3f} | {m.rows_per_s_b64:,.0f} | {m.size_mb:.3f} | {e.seconds:.1f} | "
                     f"{'met' if not e.misses else 'misses ' + ', '.join(e.misses)} | {'yes' if e.pareto else ''} |")
    if result.skipped:
        lines += ["", "Passes that could not run (the search went on without them):", ""]
        lines += [f"- {s}" for s in result.skipped]
    lines += ["", "## What each candidate is", ""]
    lines += [f"- `{e.candidate.name}`: {describe_candidate(e.candidate.notes)}" for e in result.entries]
    lines += ["", "## How the search works", "", strategy.strip(), "",
              "## How each figure is measured", "",
              "- metric: the main metric of the first output on the run's test split (validation when it has none);",
              "- latency: single-row forward passes through the candidate's runtime after 10 warm-up passes, timed "
              "for the measuring window (--measure-seconds, 0.5 s by default; 20 passes at least); p50 and p95;",
              "- throughput: back-to-back batches of 64 test rows after warm-up, rows per second;",
              "- size: the bytes of the file the runtime loads (model.safetensors, or the .onnx file(s));",
              "- inputs are encoded once, outside the timed loop: the figures are the forward pass only.",
              "- unstructured (zeroed) weights are not a search candidate: dense kernels do the same work on zeros.",
              ""]
    if png is not None:
        lines += ["![Pareto plot](pareto.png)", "",
                  "The same plot as SVG (vector, a few KB): [pareto.svg](pareto.svg)."]
    else:
        lines += ["![Pareto plot](pareto.svg)", "",
                  "No PNG: matplotlib is not installed (`pip install 'dlforge[compress]'` brings it); the plot is "
                  "the SVG above, drawn without it."]
    path = out / "report.md"
    write_text(path, "\n".join(lines) + "\n")
    return path


__all__ = ["describe_candidate", "write_pareto_png", "write_pareto_svg", "write_search_report"]
