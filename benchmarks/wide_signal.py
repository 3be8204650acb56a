"""A table of 40 ordered number columns that are one signal: the no-recipe path (one `sequence` input, 1-D CNN)
vs the same columns as 40 numbers (an MLP) vs HistGradientBoosting, over seeds.

    PYTHONPATH=src nice -n 10 python benchmarks/wide_signal.py [--seeds 0 1 2] [--rows 1200] [--threads 1]

The data (made here, seeded): 4 classes of pulse shape (bump, box, ramp up, ramp down), each at a random
position and width within 40 steps, plus noise and a random offset; columns x0 … x39 and `shape`. A shape class
does not sit at fixed columns, so reading the columns as independent numbers loses what a convolution sees.
Each seed draws its own table (rows split 60/20/20 by `dlforge init`'s recipe with that seed).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

import dlforge
from dlforge.workflows.init import init

STEPS = 40
SHAPES = ("bump", "box", "ramp_up", "ramp_down")


def make_table(rows: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    t = np.arange(STEPS)
    label = rng.integers(0, len(SHAPES), rows)
    center = rng.uniform(8, 32, rows)[:, None]
    width = rng.uniform(3, 7, rows)[:, None]
    u = (t[None, :] - center) / width  # position relative to the pulse, in widths
    inside = np.abs(u) <= 1
    pulses = np.stack([np.exp(-2 * u**2), inside * 1.0, inside * (u + 1) / 2, inside * (1 - u) / 2])
    signal = pulses[label, np.arange(rows)] * rng.uniform(0.8, 1.2, (rows, 1))
    signal += rng.normal(0, 0.15, (rows, STEPS)) + rng.normal(0, 0.2, (rows, 1))
    frame = pd.DataFrame(signal.round(4), columns=[f"x{i}" for i in range(STEPS)])
    frame["shape"] = np.array(SHAPES)[label]
    return frame


def as_numbers(recipe: dict) -> dict:
    """The same recipe with the sequence input replaced by its columns as separate number inputs."""
    inputs = []
    for entry in recipe["inputs"]:
        inputs += [{"name": c, "type": "number"} for c in entry["columns"]] if entry["type"] == "sequence" else [entry]
    return {**recipe, "inputs": inputs}


def hgb(frame: pd.DataFrame, run_dir: Path) -> float:
    """HistGradientBoosting (default settings) on the run's own train+val rows, scored on its test rows."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    import json

    parts = json.loads((run_dir / "run.json").read_text())["split"]["parts"]
    train = np.concatenate([parts["train"]["rows"], parts["val"]["rows"]])
    test = np.asarray(parts["test"]["rows"])
    x, y = frame.drop(columns="shape").to_numpy(), frame["shape"].to_numpy()
    return float((HistGradientBoostingClassifier(random_state=0).fit(x[train], y[train]).predict(x[test]) == y[test]).mean())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    parser.add_argument("--rows", type=int, default=1200)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    scores: dict[str, list[float]] = {"sequence (1-D CNN, no-recipe path)": [], "40 numbers (MLP)": [],
                                      "HistGradientBoosting": []}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            path = Path(tmp) / f"wide{seed}.csv"
            make_table(args.rows, seed).to_csv(path, index=False)
            text = init(str(path), "shape")
            recipe = yaml.safe_load(text)
            assert any(i["type"] == "sequence" for i in recipe["inputs"]), text
            overrides = [f"training.seed={seed}", f"data.split.seed={seed}"]
            overrides += [f"training.threads={args.threads}"] if args.threads else []
            for key, rec in (("sequence (1-D CNN, no-recipe path)", recipe), ("40 numbers (MLP)", as_numbers(recipe))):
                started = time.perf_counter()
                run = dlforge.train(rec, out=Path(tmp) / f"{seed}-{len(scores[key])}-{key[:3]}", overrides=overrides,
                                    progress=False)
                scores[key].append(run.metrics["test"]["accuracy"])
                print(f"seed {seed} {key}: test accuracy {scores[key][-1]:.4f} ({run.metrics['epochs_run']} epochs, "
                      f"{time.perf_counter() - started:.0f} s wall)", flush=True)
            scores["HistGradientBoosting"].append(hgb(make_table(args.rows, seed), run.run_dir))
            print(f"seed {seed} HistGradientBoosting: {scores['HistGradientBoosting'][-1]:.4f}", flush=True)
    print("\n| model | test accuracy min / mean / max |\n|---|---|")
    for key, values in scores.items():
        v = np.array(values)
        print(f"| {key} | {v.min():.4f} / {v.mean():.4f} / {v.max():.4f} ({len(v)} seeds) |")


if __name__ == "__main__":
    main()
