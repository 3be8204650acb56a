"""`dlforge tune` on adult: trials per hour with 1 vs 2 workers, pruning on vs off, and the best validation ROC-AUC
found in 20 trials against the shipped recipes/adult.yaml (3 seeds), written to benchmarks/tune.md.

    DLFORGE_TRACKING=off nice -n 5 python benchmarks/tune.py [--trials 20] [--only shipped,a,b,c,best]

Stages run one after another (never two at once) and are resumable: each finished stage is one line of
benchmarks/tune_results.jsonl, skipped on the next run. Each study is `dlforge tune` in a subprocess, timed by wall
clock and by its CPU seconds (children's rusage); the load average is read before and after.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "tune_results.jsonl"
REPORT = ROOT / "benchmarks" / "tune.md"
WORK = Path(os.environ.get("DLFORGE_BENCH_DIR", "/tmp/dlforge-bench-tune"))
SHIPPED, SEARCHED = "recipes/adult.yaml", "recipes/adult_tune.yaml"
# stage: (workers, pruner, trials, extra --set, --timeout). This machine's 2 cores were shared by ~20 processes
# (load 15-19) when this ran, an adult epoch took about a minute: the throughput studies (1, 2, 3) therefore share
# a small budget of short trials (a 10,000-row subset, 4 epochs at most) so that all three run side by side in
# half an hour; the search study runs the full recipe (all rows, 20 epochs, early stopping) for 20 trials or
# 30 minutes, whichever comes first.
SHORT = ["training.epochs=4", "data.max_rows=10000"]
STUDIES = {
    "hb1": (1, "hyperband", 6, SHORT, None),
    "none1": (1, "none", 6, SHORT, None),
    "hb2": (2, "hyperband", 6, SHORT, None),
    "search": (1, "hyperband", 20, [], "30m"),
}
ORDER = ("hb1", "none1", "hb2", "shipped", "search")


def machine() -> dict:
    import torch

    from dlforge.core.machine import cpu_model

    cpu = cpu_model()

    return {"cpu": cpu, "cores": len(os.sched_getaffinity(0)), "capability": torch.backends.cpu.get_cpu_capability(),
            "torch": torch.__version__, "python": platform.python_version()}


def _cli(*args: str) -> tuple[float, float, str]:
    """Run `dlforge ARGS` niced; (wall seconds, CPU seconds of it and its children, stdout)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(["nice", "-n", "5", sys.executable, "-m", "dlforge.cli", *args], cwd=ROOT,
                          capture_output=True, text=True, env={**os.environ, "DLFORGE_TRACKING": "off"})
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    sys.stderr.write(proc.stderr[-3000:])
    if proc.returncode != 0:
        raise SystemExit(f"dlforge {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return wall, cpu, proc.stdout


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def _val(run_dir: Path) -> dict:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {part: {k: metrics[part][k] for k in ("accuracy", "roc_auc") if k in metrics.get(part, {})}
            for part in ("val", "test")}


def stage_shipped(seeds=(0, 1, 2), recipe: str = SHIPPED, key: str = "shipped") -> dict:
    runs = []
    for seed in seeds:
        out = WORK / key / f"seed{seed}"
        shutil.rmtree(out, ignore_errors=True)
        load = _load()
        wall, cpu, _ = _cli("train", recipe, "--out", str(out), "--quiet", "--set", f"training.seed={seed}",
                            "--set", "training.baseline=false")
        runs.append({"seed": seed, **_val(out), "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
                     "load_start": load, "load_end": _load()})
    return {"stage": key, "recipe": recipe, "runs": runs}


def stage_study(stage: str) -> dict:
    workers, pruner, trials, sets, timeout = STUDIES[stage]
    out = WORK / f"study_{stage}"
    shutil.rmtree(out, ignore_errors=True)
    load = _load()
    extra = [a for s in sets for a in ("--set", s)] + (["--timeout", timeout] if timeout else [])
    wall, cpu, stdout = _cli("tune", SEARCHED, "--trials", str(trials), "--workers", str(workers), "--out", str(out),
                             "--set", f"tune.pruner={pruner}", *extra)
    with (out / "trials.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    states = {}
    for row in rows:
        states[row["state"]] = states.get(row["state"], 0) + 1
    values = [float(r["value"]) for r in rows if r["state"] == "COMPLETE"]
    settings = json.loads((out / "tune.json").read_text())
    epochs = sum(int(r["epochs_run"] or 0) for r in rows)
    # A copy of what the study wrote that is worth keeping (not the trial run directories).
    keep = ROOT / "benchmarks" / "tune_runs" / f"study_{stage}"
    shutil.rmtree(keep, ignore_errors=True)
    keep.mkdir(parents=True)
    for name in ("trials.csv", "tune.md", "best.yaml"):
        shutil.copy(out / name, keep / name)
    shutil.copytree(out / "plots", keep / "plots")
    return {"stage": stage, "workers": workers, "pruner": pruner, "budget": trials, "sets": sets, "timeout": timeout,
            "trials": len(rows), "states": states,
            "threads_per_worker": settings.get("threads_per_worker"), "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
            "trials_per_hour": round(len(rows) / wall * 3600, 1), "epochs_trained": epochs,
            "best_val_roc_auc": max(values) if values else None,
            "best_after": {n: max([float(r["value"]) for r in rows[:n] if r["state"] == "COMPLETE"] or [float("nan")])
                           for n in (5, 10, 20) if n <= len(rows)},
            "load_start": load, "load_end": _load(), "stdout": stdout[-800:]}


def stage_best() -> dict:
    best = WORK / "study_search" / "best.yaml"
    if not best.is_file():
        raise SystemExit("stage 'best' needs the search study first")
    return {**stage_shipped(recipe=str(best), key="best"), "recipe": "the search study's best.yaml"}


def read() -> dict:
    done = {}
    if RESULTS.exists():
        for line in RESULTS.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                done[row["stage"]] = row
    return done


def _mm(values: list[float]) -> str:
    return f"min {min(values):.4f}, mean {sum(values) / len(values):.4f}" if values else "n/a"


def write_report(done: dict) -> None:
    info = done.get("machine", {})
    lines = ["# `dlforge tune` on adult", "",
             "Generated by `benchmarks/tune.py` from `benchmarks/tune_results.jsonl`. Search space: "
             "`recipes/adult_tune.yaml` (lr, weight decay, batch size, dropout, layer widths; each trial is "
             "recipes/adult.yaml with the sampled values, early stopping on val ROC-AUC, patience 5, at most 20 epochs).",
             "", f"Machine: {info.get('cpu', '?')}, {info.get('cores', '?')} cores shared with ~9 other engineers' jobs "
             f"(load averages below), torch {info.get('torch', '?')} ({info.get('capability', '?')}). Every job niced "
             "(+5), one at a time. The load is the 1-minute load average before / after each job.", ""]
    studies = [done[s] for s in STUDIES if s in done]
    if studies:
        lines += ["## Studies", "",
                  "Throughput studies hb1 / none1 / hb2: the same budget of 6 trials, each on a 10,000-row subset "
                  "(`--set data.max_rows=10000`: 5,991 train / 666 val rows) for at most 4 epochs, TPE seeded 0, run one "
                  "after another. The search study: the full recipe, 20 trials or 30 minutes. CPU is the CPU seconds of "
                  "the `dlforge tune` process and its workers (user + system).", "",
                  "| study | workers x threads | pruner | trials (complete / pruned / failed) | epochs trained | wall | "
                  "CPU | CPU s per trial | trials per hour | best val ROC-AUC after 5 / 10 / 20 trials (all) | load |",
                  "|---" * 11 + "|"]
        for s in studies:
            st = s["states"]
            after = " / ".join(f"{v:.4f}" for v in s["best_after"].values())
            after += f" ({s['best_val_roc_auc']:.4f})" if s["best_val_roc_auc"] is not None else ""
            lines.append(f"| {s['stage']} | {s['workers']} x {s['threads_per_worker']} | {s['pruner']} | "
                         f"{s['trials']} ({st.get('COMPLETE', 0)} / {st.get('PRUNED', 0)} / {st.get('FAIL', 0)}) | "
                         f"{s['epochs_trained']} | {s['wall_s']:.0f} s | {s['cpu_s']:.0f} s | "
                         f"{s['cpu_s'] / max(s['trials'], 1):.0f} | **{s['trials_per_hour']:.0f}** | {after} | "
                         f"{s['load_start']} / {s['load_end']} |")
        lines.append("")
    shipped = done.get("shipped")
    if shipped:
        val = [r["val"]["roc_auc"] for r in shipped["runs"]]
        test = [r["test"]["roc_auc"] for r in shipped["runs"]]
        lines += ["## Shipped recipe vs the search", "",
                  "| what | seeds | val ROC-AUC | test ROC-AUC | test accuracy |", "|---|---|---|---|---|",
                  f"| recipes/adult.yaml | 0, 1, 2 | {_mm(val)} | {_mm(test)} | "
                  f"{_mm([r['test']['accuracy'] for r in shipped['runs']])} |"]
        best = done.get("best")
        if best:
            lines.append(f"| study a's best.yaml | 0, 1, 2 | {_mm([r['val']['roc_auc'] for r in best['runs']])} | "
                         f"{_mm([r['test']['roc_auc'] for r in best['runs']])} | "
                         f"{_mm([r['test']['accuracy'] for r in best['runs']])} |")
        for s in studies:
            if s["stage"] == "search":
                lines.append(f"| the search: best of its {s['trials']} trial(s) (training seed 0) | 0 | "
                             f"{s['best_val_roc_auc']:.4f} | | |")
        lines.append("")
    lines += ["## Commands", "", "```", "DLFORGE_TRACKING=off nice -n 5 python benchmarks/tune.py", "```",
              "", "which runs, one after another:", "```",
              f"dlforge tune {SEARCHED} --trials 6 --workers 1 --set tune.pruner=hyperband --set training.epochs=4 "
              "--set data.max_rows=10000   # hb1",
              f"dlforge tune {SEARCHED} --trials 6 --workers 1 --set tune.pruner=none ...   # none1 (same sets)",
              f"dlforge tune {SEARCHED} --trials 6 --workers 2 --set tune.pruner=hyperband ...   # hb2 (same sets)",
              f"dlforge train {SHIPPED} --set training.seed=S --set training.baseline=false   # S = 0, 1, 2",
              f"dlforge tune {SEARCHED} --trials 20 --workers 1 --timeout 30m   # search", "```",
              "", "Each study's trials.csv, tune.md, best.yaml and plots are kept in benchmarks/tune_runs/.", ""]
    notes = done.get("notes", {}).get("text")
    if notes:
        lines += ["## Reading", "", notes, ""]
    REPORT.write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default=",".join(ORDER))
    args = parser.parse_args()
    done = read()
    if "machine" not in done:
        done["machine"] = {"stage": "machine", **machine()}
        with RESULTS.open("a") as handle:
            handle.write(json.dumps(done["machine"]) + "\n")
    for stage in filter(None, args.only.split(",")):
        if stage in done:
            print(f"{stage}: done", file=sys.stderr)
            continue
        print(f"{stage}: running (load {_load()})", file=sys.stderr, flush=True)
        row = stage_shipped() if stage == "shipped" else stage_best() if stage == "best" else stage_study(stage)
        done[stage] = row
        with RESULTS.open("a") as handle:
            handle.write(json.dumps(row) + "\n")
        write_report(done)
    write_report(done)


if __name__ == "__main__":
    main()
