"""Crash safety: SIGKILL a small training run at random points, resume until it completes, compare bit-for-bit.

    PYTHONPATH=src python benchmarks/crash_resume.py --trials 20          # CRASH_TRIALS=20 works too

One uninterrupted reference run first; then each trial trains the same recipe in a fresh directory with
`dlforge train` in a subprocess and kills it (SIGKILL: no handler, no cleanup) at one of two kinds of point:
  - time: after a random delay within the reference process's lifetime (imports, data, any step, any write);
  - write: just before the k-th atomic rename (os.replace) of the run, k random: the temp file of a
    checkpoint, model.safetensors, model.json, metrics.json... is complete and the target not yet replaced,
    the moment a non-atomic writer would leave half a file.
A third of the resumes are killed again the same way. Then `dlforge train --resume` until it exits 0; if it
refuses because the run was killed before its first checkpoint, the trial starts over with `--overwrite`,
as the message says. The result must equal the reference: model.safetensors byte for byte, model.json
(less `created`), metrics.json (less every `*_seconds`, which count wall time) and history.csv; and no temp
file may be left. Each trial prints one line; the last line is the summary for docs/reliability.md.

`--signal TERM` sends SIGTERM instead (the CLI then stops between two steps or two writes with exit 130,
and the resume must still give the reference's result).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

# Run inside the subprocess: a kill just before the k-th os.replace (CRASH_AT_REPLACE=k; 0 = none) or the
# n-th one onto a file named CRASH_AT_NAME ("NAME#n"), and the count of renames written to CRASH_COUNT_FILE at exit
# (so the reference run says how many there are).
LAUNCHER = """
import atexit, os, signal, sys
k = int(os.environ.get("CRASH_AT_REPLACE", "0"))
name, _, nth = (os.environ.get("CRASH_AT_NAME") or "").partition("#")  # "state.pt#2": the 2nd rename onto it
nth = [int(nth or 1)]
sig = getattr(signal, "SIG" + os.environ.get("CRASH_SIGNAL", "KILL"))
count = [0]
real = os.replace
def replace(src, dst):
    global name
    count[0] += 1
    if name and os.path.basename(dst) == name:
        nth[0] -= 1
    if count[0] == k or (name and nth[0] == 0):
        name = None
        os.kill(os.getpid(), sig)
    return real(src, dst)
os.replace = replace
if os.environ.get("CRASH_COUNT_FILE"):
    atexit.register(lambda: open(os.environ["CRASH_COUNT_FILE"], "w").write(str(count[0])))
from dlforge.cli import main
main(sys.argv[1:])
"""


def make_data(folder: Path) -> Path:
    rng = np.random.default_rng(0)
    n = 240
    x1, x2 = rng.normal(size=n), rng.normal(size=n)
    color = rng.choice(["red", "green", "blue"], size=n)
    target = np.where(x1 + 0.5 * x2 + (color == "red") > 0.5, "good", "bad")
    path = folder / "data.csv"
    pd.DataFrame({"x1": x1, "x2": x2, "color": color, "target": target}).to_csv(path, index=False)
    return path


def make_recipe(folder: Path, csv: Path) -> Path:
    recipe = {
        "name": "crash",
        "data": {"source": str(csv), "split": {"val": 0.2, "test": 0.2, "seed": 0}},
        "inputs": [{"name": "x1", "type": "number"}, {"name": "x2", "type": "number"},
                   {"name": "color", "type": "category"}],
        "outputs": [{"name": "target", "type": "binary"}],
        "combiner": {"name": "concat", "layers": [16]},
        # a checkpoint every 3 steps (5 steps an epoch) puts many writes in a short run; early stopping state,
        # dropout RNG and a schedule must all survive the resume.
        # threads: 1 pins torch's thread count in every process (a reduction's order may depend on it).
        "training": {"epochs": 4, "batch_size": 32, "threads": 1, "optimizer": {"name": "adam", "lr": 0.01},
                     "schedule": {"name": "onecycle"}, "checkpoint_every_steps": 3,
                     "regularization": {"dropout": 0.1},
                     "early_stopping": {"metric": "val.loss", "patience": 3}},
    }
    path = folder / "recipe.json"
    path.write_text(json.dumps(recipe))
    return path


def dlforge(args: list[str], *, kill_at: int = 0, kill_at_name: str = "", delay: float | None = None,
            signal_name: str = "KILL", count_file: Path | None = None, timeout: float = 600) -> tuple[int, str]:
    """`dlforge ARGS --quiet` in a subprocess, killed as planned; (exit code, output)."""
    env = dict(os.environ, CRASH_AT_REPLACE=str(kill_at), CRASH_AT_NAME=kill_at_name, CRASH_SIGNAL=signal_name,
               OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    if count_file is not None:
        env["CRASH_COUNT_FILE"] = str(count_file)
    proc = subprocess.Popen([sys.executable, "-c", LAUNCHER, *args, "--quiet"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if delay is not None:
        try:
            out, _ = proc.communicate(timeout=delay)
            return proc.returncode, out
        except subprocess.TimeoutExpired:
            proc.send_signal(9 if signal_name == "KILL" else 15)
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def without_timings(value):
    """metrics without wall-clock readings (every key ending in `_seconds`: train, prepare, a baseline's fit):
    they measure the process that wrote them, not the result."""
    if isinstance(value, dict):
        return {k: without_timings(v) for k, v in value.items() if not k.endswith("_seconds")}
    return value


def fingerprint(run_dir: Path) -> dict:
    model_json = json.loads((run_dir / "model.json").read_text())
    model_json.pop("created")
    metrics = without_timings(json.loads((run_dir / "metrics.json").read_text()))
    return {"weights": hashlib.sha256((run_dir / "model.safetensors").read_bytes()).hexdigest(),
            "model.json": model_json, "metrics.json": metrics,
            "history.csv": (run_dir / "history.csv").read_text()}


def leftovers(run_dir: Path) -> list[str]:
    return [str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.name.endswith((".tmp", ".dlforge-tmp"))]


def trial(i: int, rng: random.Random, recipe: Path, work: Path, reference: dict, lifetime: float, renames: int,
          signal_name: str) -> tuple[str, str]:
    out = work / f"trial{i}"
    kills, notes = [], []

    def plan() -> dict:
        if rng.random() < 0.5:
            return {"delay": rng.uniform(0.0, lifetime)}
        return {"kill_at": rng.randint(1, renames)}

    first = plan()
    kills.append(first)
    rc, text = dlforge(["train", str(recipe), "--out", str(out)], signal_name=signal_name, **first)
    notes.append(f"rc {rc}")
    if rng.random() < 1 / 3:  # the resume is killed too (a kill while cleaning up after the first one)
        again = plan()
        kills.append(again)
        rc, text = dlforge(["train", "--resume", str(out)], signal_name=signal_name, **again)
        notes.append(f"killed resume rc {rc}")
        if rc not in (0, 2, 130, -9, -15):
            return "ERROR", f"resume rc {rc}: {text[-400:]}"
    # The final resume runs in this process (the same function the CLI calls): no second torch import per trial.
    import dlforge as api
    from dlforge.core.errors import DlforgeError

    try:
        api.train(resume=out, progress=False)
        notes.append("resumed")
    except DlforgeError as exc:
        if not ("nothing to resume: the run was stopped before its first checkpoint" in exc.render()
                or "no such run directory" in exc.render() or "not a dlforge run directory" in exc.render()):
            return "ERROR", f"resume: {exc.render()}"
        notes.append("refused before the first checkpoint; started over")
        api.train(str(recipe), out=out, overwrite=True, progress=False)
    left = leftovers(out)
    if left:
        return "LEFTOVER", f"temp files left: {left}"
    got = fingerprint(out)
    outcome = "identical" if got == reference else "MISMATCH"
    if outcome == "MISMATCH":
        differ = [k for k in got if got[k] != reference[k]]
        notes.append(f"differs: {differ}")
    refused = any("refused" in n for n in notes)
    return ("refused-then-identical" if refused and outcome == "identical" else outcome), \
        f"kills {kills}; " + ", ".join(notes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=int(os.environ.get("CRASH_TRIALS", "20")))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--signal", default="KILL", choices=["KILL", "TERM"])
    parser.add_argument("--keep", action="store_true", help="Keep the work directory.")
    args = parser.parse_args()
    print(f"{run_trials(args.trials, seed=args.seed, signal_name=args.signal, keep=args.keep)}")


def run_trials(n: int, *, seed: int = 0, signal_name: str = "KILL", keep: bool = False, log=print) -> str:
    """Run `n` trials; return the summary line. Raises AssertionError when a trial does not end identical."""
    work = Path(tempfile.mkdtemp(prefix="dlforge-crash-"))
    try:
        recipe = make_recipe(work, make_data(work))
        started = time.perf_counter()
        count_file = work / "renames.txt"
        rc, text = dlforge(["train", str(recipe), "--out", str(work / "reference")], count_file=count_file)
        lifetime = time.perf_counter() - started
        assert rc == 0, text
        reference = fingerprint(work / "reference")
        renames = int(count_file.read_text())
        log(f"reference: {lifetime:.1f} s, {renames} atomic renames, "
            f"{reference['metrics.json']['epochs_run']} epochs")
        rng = random.Random(seed)
        outcomes = []
        for i in range(n):
            outcome, detail = trial(i, rng, recipe, work, reference, lifetime, renames, signal_name)
            outcomes.append(outcome)
            log(f"trial {i + 1}/{n}: {outcome}  ({detail})")
        good = sum(o in ("identical", "refused-then-identical") for o in outcomes)
        refused = outcomes.count("refused-then-identical")
        summary = (f"{good} of {n} SIG{signal_name} resumes are bit-identical to the uninterrupted run "
                   f"({refused} of them refused with a clear message before the first checkpoint and were started "
                   f"over); failures: {[o for o in outcomes if o not in ('identical', 'refused-then-identical')]}")
        assert good == n, summary
        return summary
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
