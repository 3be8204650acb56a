"""Fairness before/after group thresholds, and ECE before/after temperature scaling, on adult and COMPAS.

    PYTHONPATH=src DLFORGE_TRACKING=off python benchmarks/fairness.py [--seeds 0 1 2] [--out /tmp/fairness]

Trains recipes/adult_fair.yaml and recipes/compas_fair.yaml once per training seed (the official test split and
the validation rows stay fixed) and prints markdown tables: per group of the mitigation column, the test
selection rate, TPR, FPR and accuracy before and after, the disparities, and the ECE; each figure as
mean [min, max] over the seeds. docs/fairness.md holds the tables this printed.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import dlforge

RECIPES = {"adult_fair": "sex", "compas_fair": "race"}
REPO = Path(__file__).resolve().parents[1]


def spread(values: list[float]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    return f"{statistics.mean(values):.3f} [{min(values):.3f}, {max(values):.3f}]"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default="/tmp/fairness-runs")
    args = parser.parse_args()
    results = {}
    for name, column in RECIPES.items():
        runs = []
        for seed in args.seeds:
            result = dlforge.train(str(REPO / "recipes" / f"{name}.yaml"), out=Path(args.out) / f"{name}_{seed}",
                                   overwrite=True, progress=False,
                                   overrides=[f"training.seed={seed}", "training.threads=1"])
            runs.append(result.metrics)
        results[name] = runs
        fair = [m["fairness"] for m in runs]
        groups = list(fair[0]["before"][column]["groups"])
        print(f"\n### {name}: by {column} (test split, {len(runs)} seeds: mean [min, max])\n")
        print("| group | rows | selection rate before | after | TPR before | after | FPR before | after | "
              "accuracy before | after |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for g in groups:
            cells = [str(fair[0]["before"][column]["groups"][g]["count"])]
            for key in ("selection_rate", "tpr", "fpr", "accuracy"):
                for when in ("before", "after"):
                    cells.append(spread([f[when][column]["groups"][g][key] for f in fair]))
            print(f"| {g} | " + " | ".join(cells) + " |")
        print("\n| disparity | before | after |\n|---|---|---|")
        for key in fair[0]["before"][column]["disparities"]:
            print(f"| {key.replace('_', ' ')} | {spread([f['before'][column]['disparities'][key] for f in fair])} | "
                  f"{spread([f['after'][column]['disparities'][key] for f in fair])} |")
        print("\n| overall (test) | before | after |\n|---|---|---|")
        print(f"| accuracy | {spread([f['before'][column]['overall']['accuracy'] for f in fair])} | "
              f"{spread([f['after'][column]['overall']['accuracy'] for f in fair])} |")
        cal = [m["calibration"] for m in runs]
        print(f"| ECE (%), temperature scaling | {spread([100 * c['ece'] for c in cal])} | "
              f"{spread([100 * c['after']['ece'] for c in cal])} |")
        print(f"| NLL | {spread([c['nll'] for c in cal])} | {spread([c['after']['nll'] for c in cal])} |")
        print(f"| temperature | | {spread([c['temperature'] for c in cal])} |")
        print(f"| ROC-AUC (test) | {spread([m['test']['roc_auc'] for m in runs])} | (unchanged by thresholds) |")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "fairness.json").write_text(json.dumps(
        {n: [{k: m[k] for k in ("fairness", "calibration", "test")} for m in runs] for n, runs in results.items()}))


if __name__ == "__main__":
    main()
