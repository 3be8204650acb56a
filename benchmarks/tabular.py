"""The no-recipe path on the shipped tables vs scikit-learn, over seeds: does the tabular default pay?

    OMP_NUM_THREADS=1 PYTHONPATH=src DLFORGE_DATA=../shared/data nice -n 10 python benchmarks/tabular.py \
        [--seeds 0 1 2] [--only adult compas] [--out benchmarks/tabular.md]

For each shipped tabular set (adult, german_credit, lending_club, compas) and each seed, the recipe is what
`dlforge train DATA --target COL` infers (`init`, nothing edited) with `training.seed` and the validation
split's seed set to the seed; it trains through `dlforge.train`, and its `baseline` block gives
HistGradientBoosting (default settings, native categorical columns) and logistic regression fitted on the
same training rows and scored on the same test rows (the data's official test split; under a cross-fit
ensemble, `training.cross_fit`, the training rows are the pooled train+val rows every member drew on, which
for german_credit is the whole official training split, so its baseline is the same for every seed). Extra "unseen" rows
use targets the default was not tuned on: two positive, skewed regression targets (log-transformed by init).

Reported: accuracy and ROC-AUC (or RMSE and R²), min and mean over seeds, and seconds, wall and CPU
(process time, all threads): dlforge's for the whole no-recipe path (reading, typing, preparing, training,
evaluating, saving; with `training.baseline: false`, the baseline being fitted after it on the same split)
and each scikit-learn model's fit. The CPU and the load average are recorded beside the timings: on a shared
machine wall time grows with the neighbours, CPU time much less.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

import dlforge
from dlforge.data.prepare import prepare
from dlforge.data.readers import load_table
from dlforge.evaluation.baseline import fit_baseline
from dlforge.recipe.io import load_recipe
from dlforge.training.cross_fit import pooled
from dlforge.training.setup import output_scales
from dlforge.workflows.init import infer_recipe

SETS = {  # name: (source, target, kind)
    "adult": ("builtin:adult", "income_gt_50k", "shipped"),
    "german_credit": ("builtin:german_credit", "good_credit", "shipped"),
    "lending_club": ("builtin:lending_club", "Class", "shipped"),
    "compas": ("builtin:compas", "two_year_recid", "shipped"),
    "german_credit→credit_amount": ("builtin:german_credit", "credit_amount", "unseen"),
    "lending_club→annual_inc": ("builtin:lending_club", "annual_inc", "unseen"),
}
MODELS = ("dlforge", "hist_gradient_boosting", "logistic_regression", "ridge")


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown"


def one_run(source: str, target: str, seed: int, workdir: Path) -> dict:
    wall, cpu = time.perf_counter(), time.process_time()
    table = load_table(source)
    recipe = yaml.safe_load(infer_recipe(table, source, target))
    recipe["training"]["seed"] = seed
    recipe["data"]["split"]["seed"] = seed
    recipe["training"]["baseline"] = False  # fitted below on the same split, timed on its own
    result = dlforge.train(recipe, out=workdir / f"{target}-{seed}", overwrite=True, progress=False)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    metrics = result.metrics
    row = {"dlforge": {**_scores(metrics["test"]), "seconds": wall, "cpu_seconds": cpu,
                       "epochs": metrics["epochs_run"], "best_epoch": metrics["best_epoch"],
                       "warnings": metrics.get("warnings", []),
                       "cross_fit": metrics.get("cross_fit", {}).get("folds", 1)}}
    resolved = load_recipe(recipe)
    prepared = prepare(resolved, table=table)  # the same rows: the split depends on the recipe only
    splits = prepared.splits
    if resolved.training.cross_fit > 1:  # the members trained on train+val: so does the baseline (as in `train`)
        splits = {"train": pooled(splits), "test": splits["test"]}
    for name, values in fit_baseline(splits, prepared.signature(), seed=seed,
                                     units=output_scales(prepared), timed=True).items():
        if isinstance(values, dict):
            row[name] = {**_scores(values), "seconds": values["fit_seconds"], "cpu_seconds": values["fit_cpu_seconds"]}
    return row


def _scores(metrics: dict) -> dict:
    keys = ("accuracy", "roc_auc", "f1", "rmse", "r2")
    return {k: metrics[k] for k in keys if k in metrics}


def _cell(values: list[float], digits: int = 4) -> str:
    return f"{min(values):.{digits}f} / {np.mean(values):.{digits}f}"


def render(results: dict, seeds: list[int], header: list[str]) -> str:
    lines = header + ["", "| set | model | accuracy (min / mean) | ROC-AUC or R² (min / mean) | RMSE (min / mean) | "
                      "wall s (min / mean) | CPU s (min / mean) | load avg (1 min, start → end) |",
                      "|---|---|---|---|---|---|---|---|"]
    for name, entry in results.items():
        runs = entry["runs"]
        for model in MODELS:
            got = [r[model] for r in runs if model in r]
            if not got:
                continue
            acc = _cell([g["accuracy"] for g in got]) if "accuracy" in got[0] else "–"
            second = "roc_auc" if "roc_auc" in got[0] else "r2" if "r2" in got[0] else None
            auc = _cell([g[second] for g in got]) if second else "–"
            rmse = _cell([g["rmse"] for g in got], 2) if "rmse" in got[0] else "–"
            secs = _cell([g["seconds"] for g in got], 1)
            cpus = _cell([g["cpu_seconds"] for g in got], 1)
            label = f"{name} ({entry['kind']})" if model == "dlforge" else ""
            load = entry["load"] if model == "dlforge" else ""
            lines.append(f"| {label} | {model} | {acc} | {auc} | {rmse} | {secs} | {cpus} | {load} |")
    gaps = ["", "Gap to HistGradientBoosting (mean over seeds; negative: dlforge behind):", ""]
    for name, entry in results.items():
        runs = entry["runs"]
        if not all("hist_gradient_boosting" in r for r in runs):
            continue
        parts = []
        for key, scale, unit in (("accuracy", 100, " points"), ("roc_auc", 1, ""), ("r2", 1, ""), ("rmse", 1, "")):
            if key in runs[0]["dlforge"]:
                gap = np.mean([r["dlforge"][key] - r["hist_gradient_boosting"][key] for r in runs]) * scale
                parts.append(f"{key} {gap:+.{2 if scale == 100 else 4}f}{unit}")
        slowest = max(r["dlforge"]["seconds"] for r in runs)
        most_cpu = max(r["dlforge"]["cpu_seconds"] for r in runs)
        warned = sum(bool(r["dlforge"]["warnings"]) for r in runs)
        parts.append(f"slowest dlforge run {slowest:.1f} s wall, {most_cpu:.1f} s CPU; "
                     f"best-epoch-is-last warnings {warned}/{len(runs)}")
        folds = runs[0]["dlforge"].get("cross_fit", 1)
        gaps.append(f"- {name}" + (f" ({folds}-fold cross-fit ensemble; baseline on the pooled train+val rows)"
                                   if folds > 1 else "") + ": " + ", ".join(parts))
    return "\n".join(lines + gaps) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    parser.add_argument("--only", nargs="*", default=list(SETS))
    parser.add_argument("--out", default=str(Path(__file__).with_name("tabular.md")))
    args = parser.parse_args()
    import torch

    header = ["# Tabular: the no-recipe path vs scikit-learn", "",
              "`python benchmarks/tabular.py` (one run; see its docstring for what is measured).", "",
              f"- CPU: {cpu_name()}, torch CPU capability {torch.backends.cpu.get_cpu_capability()}, "
              f"{os.cpu_count()} logical cores shared with other jobs; torch threads {torch.get_num_threads()}, "
              f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}",
              f"- torch {torch.__version__}, seeds {args.seeds}; started {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"]
    results = {}
    with tempfile.TemporaryDirectory(prefix="dlforge-tabular-") as tmp:
        for name in args.only:
            source, target, kind = SETS[name]
            load_start = os.getloadavg()[0]
            runs = []
            for seed in args.seeds:
                runs.append(one_run(source, target, seed, Path(tmp)))
                d = runs[-1]["dlforge"]
                print(name, seed, {k: round(v, 4) if isinstance(v, float) else v for k, v in d.items()}, flush=True)
            results[name] = {"kind": kind, "runs": runs, "load": f"{load_start:.1f} → {os.getloadavg()[0]:.1f}"}
            Path(args.out).write_text(render(results, args.seeds, header))
    print(Path(args.out).read_text())


if __name__ == "__main__":
    main()
