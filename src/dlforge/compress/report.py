"""`RUN/compress/report.md` and `pareto.svg`: what the search tried, measured, kept, and why.

The plot is SVG from the project's own chart module (report/svg.py), not a PNG: dlforge dropped matplotlib (about
65 MB of install and a second of import for three kinds of chart), and a few kilobytes of vector text read the same
in a browser, a Markdown viewer or report.html.
"""

from __future__ import annotations

import platform
from pathlib import Path

import torch

from dlforge.core.files import write_text
from dlforge.recipe.training import higher_is_better
from dlforge.report.plots import save_svg
from dlforge.report.svg import bubble_chart


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def write_pareto_svg(path: Path, result, budgets) -> Path:
    points = [(e.measurement.p50_ms, e.measurement.metric, e.measurement.size_bytes, e.candidate.name, e.pareto)
              for e in result.entries]
    limit = None
    if budgets.max_accuracy_drop is not None:  # the lowest (highest, for an error) metric the budget allows
        limit = result.reference + (-1 if higher_is_better(result.metric_name) else 1) * budgets.max_accuracy_drop
    svg = bubble_chart(points, title=f"candidates: {result.metric_name} vs p50 latency (area: file size; filled: Pareto)",
                       xlabel="p50 latency at batch 1 (ms)", ylabel=f"test {result.metric_name}",
                       vline=budgets.max_latency_ms, hline=limit)
    return save_svg(path, svg)


def write_search_report(out: Path, result, *, budgets, objective: str, closest, strategy: str) -> Path:
    out = Path(out)
    write_pareto_svg(out / "pareto.svg", result, budgets)
    threads = result.entries[0].measurement.threads if result.entries else torch.get_num_threads()
    lines = [f"# dlforge compress: {result.metric_name} vs latency vs size", "",
             f"Budgets: accuracy drop <= {budgets.max_accuracy_drop}, p50 latency <= {budgets.max_latency_ms} ms, "
             f"size <= {budgets.max_size_mb} MB (None: no limit). Objective among those that meet them: lowest "
             f"{'p50 latency' if objective == 'latency' else 'file size'}.",
             f"Reference (the run itself, fp32 torch): {result.metric_name} {result.reference:.4f} on the test split.",
             f"Machine: {_cpu()}, torch {torch.__version__}, {torch.backends.cpu.get_cpu_capability()}; torch "
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
    lines += ["", "## How the search works", "", strategy.strip(), "",
              "## How each figure is measured", "",
              "- metric: the main metric of the first output on the run's test split (validation when it has none);",
              "- latency: single-row forward passes through the candidate's runtime after 10 warm-up passes, timed "
              "for the measuring window (--measure-seconds, 0.5 s by default; 20 passes at least); p50 and p95;",
              "- throughput: back-to-back batches of 64 test rows after warm-up, rows per second;",
              "- size: the bytes of the file the runtime loads (model.safetensors, or the .onnx file(s));",
              "- inputs are encoded once, outside the timed loop: the figures are the forward pass only.",
              "- unstructured (zeroed) weights are not a search candidate: dense kernels do the same work on zeros.",
              "", "![Pareto plot](pareto.svg)", "",
              "The plot is SVG (report/svg.py) rather than PNG: dlforge draws its charts without matplotlib "
              "(dropped for its ~65 MB install and import time); vector text is a few KB and scales."]
    path = out / "report.md"
    write_text(path, "\n".join(lines) + "\n")
    return path


__all__ = ["write_pareto_svg", "write_search_report"]
