"""`dlforge compress`: the registered passes searched together under accuracy, latency and size budgets.

The strategy, cheapest first, never the full product of passes and settings:
1. the run itself (fp32, torch) is measured: the reference for the accuracy drop;
2. the transform passes (every registered pass other than `prune` and `distill`: ONNX export, int8, ... as they
   are registered) are chained from it, each pass once per chain and only where it applies (fp32 -> onnx ->
   int8_static and -> int8_dynamic: int8 takes the ONNX graph and is never applied twice; QAT only when both
   post-training int8 candidates lost more than the accuracy budget), the per-layer fp32 fallback of int8 given
   what is left of the accuracy budget;
3. structured pruning, its ratio bisected against the accuracy budget (`prune_trials` fine-tuned trials: 0.5
   first, then halfway up after a trial within the budget, halfway down after one over it), and the largest ratio
   within the budget goes through the transform chain (pruned -> onnx -> int8);
4. the distilled student, when one is given, and its transform chain.
Two rules cut the tree: a candidate already over the accuracy budget is not compressed further (every pass only
loses accuracy), and the search exits early after the first stage that yields a candidate meeting every budget,
because later stages cost far more (fine-tunes, a whole training) than the measurements of the cheap ones
(`exhaustive=True` runs every stage). The best candidate meeting every budget (lowest p50 latency, or smallest
file with `objective="size"`) is kept as a variant; if none meets them, the Pareto set (metric, latency, size) is
kept and the error names each budget the closest candidate misses, by how much.
"""

from __future__ import annotations

import csv
import importlib
import io
import math
import pkgutil
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from dlforge.compress.measure import Measurement, measure
from dlforge.compress.passes import Candidate, passes
from dlforge.compress.report import write_search_report
from dlforge.compress.variant import VARIANTS, RunData, add_variant
from dlforge.core.errors import DlforgeError
from dlforge.core.registry import Registry
from dlforge.recipe.training import higher_is_better

COMPRESS_DIR = "compress"
SEARCHED = ("prune", "distill")  # passes the search drives itself; every other registered pass is a transform
MAX_CHAIN = 3  # transform passes per chain at most (onnx -> int8_static is two)


class BudgetNotMet(DlforgeError):
    """No candidate met every budget (the CLI exits 2; the report and the Pareto set are on disk)."""


@dataclass
class Budgets:
    max_accuracy_drop: float | None = None  # of the main metric, absolute (0.005 = half a point of accuracy)
    max_latency_ms: float | None = None  # p50 at batch 1
    max_size_mb: float | None = None

    def misses(self, m: Measurement, reference: float, higher: bool) -> dict[str, tuple[float, float]]:
        """{budget: (value, limit)} for every budget `m` misses."""
        out = {}
        drop = (reference - m.metric) if higher else (m.metric - reference)
        if self.max_accuracy_drop is not None and drop > self.max_accuracy_drop + 1e-12:
            out["max-accuracy-drop"] = (drop, self.max_accuracy_drop)
        if self.max_latency_ms is not None and m.p50_ms > self.max_latency_ms:
            out["max-latency-ms"] = (m.p50_ms, self.max_latency_ms)
        if self.max_size_mb is not None and m.size_mb > self.max_size_mb:
            out["max-size-mb"] = (m.size_mb, self.max_size_mb)
        return out


@dataclass
class Entry:
    candidate: Candidate
    measurement: Measurement
    chain: list[str]
    stage: str
    seconds: float  # to build it (the pass), not to measure it
    misses: dict = field(default_factory=dict)
    pareto: bool = False


@dataclass
class SearchResult:
    entries: list[Entry]
    skipped: list[str]
    best: Entry | None
    kept: Path | None
    report: Path
    stopped_early: str | None
    reference: float
    metric_name: str
    seconds: float


def import_passes() -> None:
    """Import every module of dlforge.compress, so each registers its passes (a new pass file needs no edit here)."""
    import dlforge.compress as package

    for module in pkgutil.iter_modules(package.__path__):
        if module.name not in ("search", "cli"):
            importlib.import_module(f"{package.__name__}.{module.name}")


def pareto(entries: list[Entry], higher: bool) -> list[Entry]:
    """Entries no other entry beats on metric, p50 latency and size at once (ties are not domination)."""
    def better_or_equal(a: Measurement, b: Measurement) -> bool:
        metric = a.metric >= b.metric if higher else a.metric <= b.metric
        return metric and a.p50_ms <= b.p50_ms and a.size_bytes <= b.size_bytes

    def strictly(a: Measurement, b: Measurement) -> bool:
        return (a.metric != b.metric) or a.p50_ms < b.p50_ms or a.size_bytes < b.size_bytes

    return [e for e in entries if not any(better_or_equal(o.measurement, e.measurement)
                                          and strictly(o.measurement, e.measurement) for o in entries if o is not e)]


def _shortfall(misses: dict[str, tuple[float, float]]) -> float:
    """How far a candidate is from meeting the budgets: the sum of its relative misses (0 when it meets them)."""
    return sum((value - limit) / max(abs(limit), 1e-3) for value, limit in misses.values())


def _say_miss(budget: str, value: float, limit: float) -> str:
    unit = {"max-accuracy-drop": "", "max-latency-ms": " ms", "max-size-mb": " MB"}[budget]
    what = {"max-accuracy-drop": "accuracy drop", "max-latency-ms": "p50 latency", "max-size-mb": "size"}[budget]
    return f"{what} {value:.4g}{unit} > {limit:.4g}{unit} (over by {value - limit:.4g}{unit})"


class Search:
    """One search: its candidates, measurements and the passes' work directories under `RUN/compress/work/`."""

    def __init__(self, data: RunData, budgets: Budgets, *, registry: Registry, threads: int, seconds: float,
                 pass_options: dict[str, dict], say, skip: tuple[str, ...] = ()):
        self.data, self.budgets, self.registry = data, budgets, registry
        self.threads, self.seconds, self.pass_options, self.say = threads, seconds, pass_options, say
        self.work = Path(data.run_dir) / COMPRESS_DIR / "work"
        self.test = data.test_table()
        self.entries: list[Entry] = []
        self.skipped: list[str] = []
        self.reference = math.nan
        self.higher = True
        self.skip = set(skip)

    def transforms(self) -> list[str]:
        return [name for name, _ in self.registry.items() if name not in SEARCHED and name not in self.skip]

    def add(self, candidate: Candidate, chain: list[str], stage: str, seconds: float) -> Entry:
        m = measure(candidate, self.test, threads=self.threads, seconds=self.seconds)
        entry = Entry(candidate, m, chain, stage, seconds)
        if not self.entries:  # the run itself: the reference
            self.reference, self.higher = m.metric, higher_is_better(m.metric_name)
        entry.misses = self.budgets.misses(m, self.reference, self.higher)
        self.entries.append(entry)
        state = "meets every budget" if not entry.misses else "misses " + ", ".join(entry.misses)
        self.say(f"  {candidate.name:<32} {m.metric_name} {m.metric:.4f}  p50 {m.p50_ms:.3f} ms  p95 {m.p95_ms:.3f} ms"
                 f"  {m.rows_per_s_b64:,.0f} rows/s@64  {m.size_mb:.3f} MB  ({state})")
        return entry

    def run_pass(self, name: str, source: Entry, stage: str, **options) -> list[Entry]:
        """Apply pass `name` to `source`; failures are recorded (and reported), never fatal to the search."""
        work_dir = self.work / f"{source.candidate.name}+{name}".replace("/", "_")
        work_dir.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        try:
            made = self.registry.get(name)(source.candidate, work_dir=work_dir,
                                           **{**self.pass_options.get(name, {}), **options})
        except Exception as exc:  # a pass that cannot take this model is reported by name, and the search goes on
            message = exc.message if isinstance(exc, DlforgeError) else f"{exc.__class__.__name__}: {exc}"
            self.skipped.append(f"{name} on {source.candidate.name}: {message}")
            self.say(f"  {name} on {source.candidate.name}: skipped ({message[:200]})")
            return []
        seconds = (time.perf_counter() - started) / max(len(made), 1)
        made = [c for c in made if Path(c.run_dir) != Path(source.candidate.run_dir)]  # "nothing to do" is not new
        return [self.add(c, [*source.chain, name], stage, seconds) for c in made]

    def _about(self, name: str) -> tuple[tuple[str, ...] | None, str, bool]:
        fn = self.registry.get(name)
        return getattr(fn, "accepts", None), getattr(fn, "group", None) or name, bool(getattr(fn, "last_resort", False))

    def applies(self, name: str, source: Entry) -> bool:
        """A pass applies once per chain, to the runtimes it accepts, once per group (passes/describe_pass)."""
        accepts, group, _ = self._about(name)
        if name in source.chain or (accepts is not None and source.candidate.runtime not in accepts):
            return False
        return all(self._about(done)[1] != group for done in source.chain if done in self.registry)

    def chain(self, source: Entry, stage: str) -> None:
        """Every transform pass that applies to the source, depth first; over-budget accuracy stops a branch. A
        last-resort pass runs only when every candidate its group's other passes made from this source missed the
        accuracy budget (QAT after post-training int8 lost too much)."""
        if "max-accuracy-drop" in source.misses or len(source.chain) >= MAX_CHAIN + 1:
            return
        made: dict[str, list[Entry]] = {}
        names = [n for n in self.transforms() if self.applies(n, source)]
        for name in sorted(names, key=lambda n: self._about(n)[2]):  # last-resort passes after their group
            _, group, last_resort = self._about(name)
            if last_resort:
                siblings = made.get(group, [])
                if any("max-accuracy-drop" not in e.misses for e in siblings):
                    continue
            entries = self.run_pass(name, source, stage, **self.budget_options(name, source))
            made.setdefault(group, []).extend(entries)
            for entry in entries:
                self.chain(entry, stage)

    def budget_options(self, name: str, source: Entry) -> dict:
        """int8 passes get what is left of the accuracy budget as their per-layer fallback threshold."""
        if self._about(name)[1] != "int8" or self.budgets.max_accuracy_drop is None:
            return {}
        spent = (self.reference - source.measurement.metric) * (1 if self.higher else -1)
        return {"max_drop": max(self.budgets.max_accuracy_drop - max(spent, 0.0), 0.0)}

    def met(self) -> list[Entry]:
        return [e for e in self.entries if not e.misses]


def compress(run_dir: str | Path, budgets: Budgets, *, student: str | None = None, prune_trials: int = 3,
             max_ratio: float = 0.9, finetune: int = 1, threads: int = 1, seconds: float = 0.5,
             objective: str = "latency", exhaustive: bool = False, keep_all: bool = False,
             registry: Registry | None = None, skip: tuple[str, ...] | list[str] = (),
             say=lambda text: None) -> SearchResult:
    """Search the registered passes on `run_dir` under `budgets`; write `RUN/compress/` and keep the best variant.

    Raises BudgetNotMet (after writing the report and keeping the Pareto set) when no candidate meets every budget.
    """
    if objective not in ("latency", "size"):
        raise DlforgeError(f"--objective is latency or size; got {objective!r}", where="--objective")
    if not 0 < seconds <= 60:
        raise DlforgeError(f"--measure-seconds must be in (0, 60]; got {seconds}", where="--measure-seconds")
    if not 0 <= prune_trials <= 10:
        raise DlforgeError(f"--prune-trials must be 0..10; got {prune_trials}", where="--prune-trials")
    for option, value in (("--max-accuracy-drop", budgets.max_accuracy_drop), ("--max-latency-ms",
                          budgets.max_latency_ms), ("--max-size-mb", budgets.max_size_mb)):
        if value is not None and not (value >= 0 and math.isfinite(value)):
            raise DlforgeError(f"{option} must be a finite number >= 0; got {value}", where=option)
    if registry is None:
        import_passes()
        registry = passes
    unknown = sorted(set(skip) - set(registry.names()))
    if unknown:
        raise DlforgeError(f"--skip names no pass: {', '.join(unknown)}", where="--skip",
                           hint=f"the passes: {', '.join(sorted(registry.names()))}")
    started = time.perf_counter()
    data = RunData.load(run_dir)
    out = Path(run_dir) / COMPRESS_DIR
    if out.exists():
        shutil.rmtree(out)  # an earlier search's report and candidates: replaced, never mixed with this one's
    search = Search(data, budgets, registry=registry, threads=threads, seconds=seconds, say=say,
                    pass_options={"prune": {"finetune": finetune, "data": data},
                                  "distill": {"student": student, "data": data}}, skip=tuple(skip))
    stopped = None

    def stage_done(stage: str) -> bool:
        nonlocal stopped
        if search.met() and not exhaustive:
            stopped = (f"stopped after stage '{stage}': {len(search.met())} candidate(s) meet every budget, and the "
                       "later stages cost more (fine-tunes, training); --exhaustive runs them")
            say(stopped)
            return True
        return False

    say(f"measuring on {search.test.n_rows} test rows, torch threads {threads}")
    base = search.add(Candidate("fp32", Path(run_dir), "torch"), [], "reference", 0.0)
    search.chain(base, "transforms")
    if not stage_done("transforms") and "prune" in registry and "prune" not in search.skip and prune_trials:
        say("pruning: ratio bisected against the accuracy budget")
        low, high, ratio, best_pruned = 0.0, max_ratio, min(0.5, max_ratio), None
        tried: set[float] = set()
        for _ in range(prune_trials):
            ratio = round(ratio, 2)
            if ratio in tried or not 0 < ratio < 1:
                break
            tried.add(ratio)
            made = search.run_pass("prune", base, "prune", ratio=ratio)
            within = bool(made) and "max-accuracy-drop" not in made[0].misses
            if within:
                best_pruned = made[0] if best_pruned is None or ratio > best_pruned.candidate.notes.get("ratio", 0) \
                    else best_pruned
                low, ratio = ratio, (ratio + high) / 2
            elif made:
                high, ratio = ratio, (low + ratio) / 2
            else:
                break
        if best_pruned is not None:
            search.chain(best_pruned, "prune")
        stage_done("prune")
    if student is not None and (stopped is None or exhaustive) and "distill" in registry and "distill" not in search.skip:
        say(f"distilling the student {student}")
        for entry in search.run_pass("distill", base, "distill"):
            search.chain(entry, "distill")

    front = pareto(search.entries, search.higher)
    for entry in front:
        entry.pareto = True
    met = search.met()
    key = (lambda e: (e.measurement.p50_ms, e.measurement.size_bytes)) if objective == "latency" else \
        (lambda e: (e.measurement.size_bytes, e.measurement.p50_ms))
    best = min(met, key=key) if met else None
    kept = None
    if best is not None and best.candidate.run_dir != Path(run_dir):
        kept = Path(run_dir) / VARIANTS / f"compressed_{best.candidate.name}".replace("+", "_")
        if kept.exists():
            shutil.rmtree(kept)
        kept.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(best.candidate.run_dir), str(kept))
        best.candidate = Candidate(best.candidate.name, kept, best.candidate.runtime, best.candidate.notes)
        add_variant(run_dir, name=kept.name, path=kept, kind="compress")
    elif best is None:  # keep the Pareto set, runnable, beside the report
        for entry in front:
            if entry.candidate.run_dir != Path(run_dir):
                target = out / "pareto" / entry.candidate.name.replace("+", "_")
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(str(entry.candidate.run_dir), str(target))
                entry.candidate = Candidate(entry.candidate.name, target, entry.candidate.runtime,
                                            entry.candidate.notes)
    if not keep_all:
        shutil.rmtree(search.work, ignore_errors=True)
    closest = None if best else min(search.entries, key=lambda e: _shortfall(e.misses))
    result = SearchResult(search.entries, search.skipped, best, kept, out / "report.md", stopped, search.reference,
                          base.measurement.metric_name, time.perf_counter() - started)
    write_search_report(out, result, budgets=budgets, objective=objective, closest=closest,
                        strategy=__doc__.split("\n\n", 1)[1])
    write_candidates_csv(out / "candidates.csv", search.entries)
    if best is None:
        misses = "; ".join(_say_miss(b, v, limit) for b, (v, limit) in closest.misses.items())
        raise BudgetNotMet(f"no candidate meets every budget; the closest, {closest.candidate.name}, misses: {misses}",
                           where=str(out / "report.md"),
                           hint=f"the Pareto set ({len(front)} candidate(s)) is kept in {out / 'pareto'}; loosen the "
                                "budget it misses" + ("" if student else ", or give a --student to distill"))
    return result


def write_candidates_csv(path: Path, entries: list[Entry]) -> None:
    from dlforge.core.files import write_text

    buffer = io.StringIO()
    columns = ["name", "runtime", "chain", "stage", "metric_name", "metric", "p50_ms", "p95_ms", "rows_per_s_b64",
               "size_bytes", "size_mb", "threads", "build_seconds", "meets_budgets", "misses", "pareto", "run_dir"]
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    for e in entries:
        row = e.measurement.row()
        writer.writerow({**{k: row[k] for k in columns if k in row}, "chain": "+".join(e.chain) or "-",
                         "stage": e.stage, "build_seconds": round(e.seconds, 2), "meets_budgets": not e.misses,
                         "misses": ";".join(e.misses), "pareto": e.pareto, "run_dir": str(e.candidate.run_dir)})
    write_text(path, buffer.getvalue())


__all__ = ["Budgets", "BudgetNotMet", "Entry", "SearchResult", "compress", "import_passes", "pareto"]
