"""The no-recipe path on free text (`dlforge train DATA --target label`) vs TF-IDF + logistic regression, over seeds.

    PYTHONPATH=src DLFORGE_DATA=../shared/data nice -n 10 python benchmarks/text_newcomer.py \
        [--sets rt_snippets spam_assassin] [--seeds 0 1 2] [--no-pretrained] [--threads 1] [--drop COLUMN]

For each set: the recipe `dlforge init` writes (with the pretrained MiniLM when installed and affordable, else the
n-gram bag; --no-pretrained forces the bag), trained once per seed (training.seed = data.split.seed = seed; the
test rows are the set's official test split, the same every seed). The baseline (benchmarks/text_baselines.py:
TF-IDF 1-2 grams + LogisticRegression(C=4)) is fitted on the same training rows (train + val) and scored on the same
test rows; it has no seed. Prints test accuracy min / mean / max over seeds and the baseline's, and each run's
process CPU seconds (data preparation, training and evaluation; the machine's load changes wall time more
than CPU time). `--drop text` on spam_assassin makes a third, short-text task (subject lines only).
Results: benchmarks/text_newcomer.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import yaml

import dlforge
from dlforge.recipe.io import load_recipe
from dlforge.workflows.init import init

sys.path.insert(0, str(Path(__file__).resolve().parent))
from text_baselines import baseline  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sets", nargs="*", default=["rt_snippets", "spam_assassin"])
    parser.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    parser.add_argument("--no-pretrained", action="store_true")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="extra --set for every run")
    parser.add_argument("--drop", nargs="*", default=[], help="columns init leaves out (e.g. text: subjects only)")
    parser.add_argument("--out", default="/tmp/dlforge-text-newcomer")
    args = parser.parse_args()
    data = Path(os.environ.get("DLFORGE_DATA", "../shared/data"))
    for name in args.sets:
        text = init(str(data / name), "label", drop=tuple(args.drop), pretrained=False if args.no_pretrained else None)
        recipe = yaml.safe_load(text)
        encoders = sorted({i.get("encoder", {}).get("name", "?") for i in recipe["inputs"] if i["type"] == "text"})
        base = baseline(load_recipe(recipe))
        scores, seconds, cpu = [], [], []
        for seed in args.seeds:
            overrides = [f"training.seed={seed}", f"data.split.seed={seed}", *args.overrides]
            overrides += [f"training.threads={args.threads}"] if args.threads else []
            started, cpu_started = time.perf_counter(), time.process_time()
            run = dlforge.train(recipe, out=Path(args.out) / f"{name}-{seed}", overrides=overrides, overwrite=True,
                                progress=False)
            seconds.append(time.perf_counter() - started)
            cpu.append(time.process_time() - cpu_started)
            scores.append(run.metrics["test"]["accuracy"])
            print(f"{name} seed {seed} ({'+'.join(encoders)}): test accuracy {scores[-1]:.4f}, "
                  f"{run.metrics['epochs_run']} epochs (best {run.metrics['best_epoch']}), "
                  f"{run.metrics['train_seconds']:.0f} s training, {seconds[-1]:.0f} s wall, {cpu[-1]:.0f} s CPU, "
                  f"load {os.getloadavg()[0]:.1f}", flush=True)
        s = np.array(scores)
        print(f"| {name} | {'+'.join(encoders)} | {s.min():.4f} / {s.mean():.4f} / {s.max():.4f} ({len(s)} seeds) | "
              f"{base['accuracy']:.4f} | {np.mean(cpu):.0f} s CPU, {np.mean(seconds):.0f} s wall |", flush=True)


if __name__ == "__main__":
    main()
