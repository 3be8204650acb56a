"""Time to 99.0% MNIST test accuracy: recipes/mnist_cnn.yaml as shipped, and with each speed option undone.

Every variant is a full `dlforge.train()` of the recipe with `--set`-style overrides, in its own subprocess
(so its peak RSS is its own). A callback scores the official test set after every epoch; the time spent
scoring is subtracted, so "seconds to target" is training time only (data loading and preprocessing are
reported separately as "prep s"). Variants run one after another in the given order; the machine is shared,
so the CPU seconds of each run are printed next to its wall seconds.

    PYTHONPATH=src DLFORGE_DATA=../shared/data python benchmarks/time_to_accuracy.py
    PYTHONPATH=src DLFORGE_DATA=../shared/data python benchmarks/time_to_accuracy.py --variants shipped fp32
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "mnist_cnn.yaml"

# name -> overrides on top of the shipped recipe
VARIANTS: dict[str, list[str]] = {
    "shipped": [],
    "no-bf16": ["training.precision=fp32"],
    "no-channels_last": ["training.channels_last=false"],
    "fp32-contiguous": ["training.precision=fp32", "training.channels_last=false"],
    "batch64": ["training.batch_size=64", "training.optimizer.lr=0.0015"],
    "batch256": ["training.batch_size=256", "training.optimizer.lr=0.006"],
    "2-epochs": ["training.epochs=2"],
    "compile": ["training.compile=true"],
    "1-thread": ["training.threads=1"],
    "seed-settings": ["training.precision=fp32", "training.channels_last=false", "training.batch_size=64",
                      "training.optimizer.lr=0.001", "training.schedule={name: constant}", "training.epochs=5"],
}


class TestAccuracyEachEpoch:
    """Scores the test split after each epoch and keeps (training seconds, accuracy) pairs."""

    def __init__(self, test_split):
        self.test = test_split
        self.started = self.started_cpu = None
        self.scoring = self.scoring_cpu = 0.0
        self.points: list[tuple[float, float]] = []
        self.cpu_points: list[float] = []

    def on_epoch_start(self, trainer, epoch):
        if self.started is None:
            self.started, self.started_cpu = time.perf_counter(), time.process_time()

    def on_epoch_end(self, trainer, epoch, metrics):
        now, now_cpu = time.perf_counter(), time.process_time()
        accuracy = trainer.evaluate(self.test)["accuracy"]
        trainer.model.train()
        self.points.append((now - self.started - self.scoring, accuracy))
        self.cpu_points.append(now_cpu - self.started_cpu - self.scoring_cpu)
        self.scoring += time.perf_counter() - now
        self.scoring_cpu += time.process_time() - now_cpu
        return False


def worker(name: str, target: float, threads: int | None) -> None:
    from dlforge.data import prepare
    from dlforge.recipe.io import load_recipe
    import dlforge.workflows.train as run

    overrides = VARIANTS[name] + ([f"training.threads={threads}"] if threads else [])
    recipe = load_recipe(str(RECIPE), overrides)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    test = prepare(recipe).splits["test"]  # the callback's own copy of the test split
    prep_seconds = time.perf_counter() - wall0
    callback = TestAccuracyEachEpoch(test)
    with tempfile.TemporaryDirectory() as out:
        result = run.train(str(RECIPE), overrides=overrides, out=out, overwrite=True, progress=False,
                           callbacks=[callback])
    reached = next((seconds for seconds, acc in callback.points if acc >= target), None)
    reached_cpu = next((cpu for cpu, (_, acc) in zip(callback.cpu_points, callback.points) if acc >= target), None)
    print(json.dumps({
        "variant": name, "overrides": overrides, "per_epoch": callback.points, "seconds_to_target": reached, "cpu_seconds_to_target": reached_cpu,
        "final_test_accuracy": result.metrics["test"]["accuracy"], "train_seconds": result.metrics["train_seconds"],
        "prep_seconds": prep_seconds, "cpu_seconds": time.process_time() - cpu0,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=["shipped", "fp32-contiguous", "no-bf16", "no-channels_last",
                                                          "compile"], choices=list(VARIANTS))
    parser.add_argument("--target", type=float, default=0.99)
    parser.add_argument("--threads", type=int, default=None,
                        help="add training.threads=N to every variant (1 on a shared machine: see README)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.target, args.threads)
        return
    print(f"| variant | overrides | test acc per epoch @ training wall s | wall s to >= {100 * args.target:.1f}% "
          f"| CPU s to >= {100 * args.target:.1f}% | final acc | CPU s (whole run) | peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.variants:
        extra = ["--threads", str(args.threads)] if args.threads else []
        out = subprocess.run([sys.executable, __file__, "--worker", name, "--target", str(args.target), *extra],
                             check=True, capture_output=True, text=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        epochs = ", ".join(f"{acc:.4f}@{s:.0f}s" for s, acc in r["per_epoch"])
        reached = f"{r['seconds_to_target']:.1f}" if r["seconds_to_target"] is not None else "not reached"
        reached_cpu = f"{r['cpu_seconds_to_target']:.1f}" if r["cpu_seconds_to_target"] is not None else "-"
        print(f"| {name} | {' '.join(r['overrides']) or '(as shipped)'} | {epochs} | {reached} | {reached_cpu} | "
              f"{r['final_test_accuracy']:.4f} | {r['cpu_seconds']:.1f} | "
              f"{r['peak_rss_mb']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
