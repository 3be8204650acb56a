"""The audit on real data: its time on a ~50,000-row table, its recall and precision on planted problems, and what
its cheap checks add to `dlforge train`.

    PYTHONPATH=src DLFORGE_DATA=../shared/data nice -n 5 python benchmarks/audit.py [--seeds 3] [--only adult photos]

- time: `dlforge.audit` on adult (48,842 rows, 14 input columns, official train/test split), once without and once
  with the planted-problem measurement (1 planted copy, what `dlforge audit` does by default); wall and CPU seconds
  (process time, all threads) and the load average, since this machine is shared;
- recall: the audit run with `plant_seeds=SEEDS` on adult (target income_gt_50k) and on tuxpaint_photos (187
  photos, image folder): cross-split duplicates (k training rows copied into the test split with edits) and 2% of
  the labels flipped; recall and precision (new findings in the planted copy that are planted) per seed;
- train: the cheap checks `dlforge train` runs (quick.quick_checks) beside read_table + prepare on the adult
  recipe, 3 repeats each, same process.
Prints a markdown section (paste into benchmarks/audit.md) and writes the raw numbers as JSON beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import time
from pathlib import Path

import dlforge


def machine() -> str:
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in subprocess.run(
            ["lscpu"], capture_output=True, text=True).stdout.splitlines() if line.startswith("Model name"))
    except (StopIteration, OSError):
        cpu = platform.processor()
    import torch

    return f"{cpu}, {os.cpu_count()} CPUs, torch CPU capability {torch.backends.cpu.get_cpu_capability()}"


def timed(fn):
    load = os.getloadavg()[0]
    wall, cpu = time.perf_counter(), time.process_time()
    value = fn()
    return value, round(time.perf_counter() - wall, 1), round(time.process_time() - cpu, 1), round(load, 1)


def time_adult() -> list[dict]:
    rows = []
    for plant in (False, True):
        result, wall, cpu, load = timed(lambda p=plant: dlforge.audit("builtin:adult", target="income_gt_50k",
                                                                      plant=p))
        rows.append({"what": f"adult, plant={plant}", "rows": result.findings["rows"], "wall_s": wall, "cpu_s": cpu,
                     "load": load, "steps": result.findings["seconds"]})
    return rows


def recall(source: str, target: str, seeds: int) -> dict:
    result, wall, cpu, load = timed(lambda: dlforge.audit(source, target=target, plant=True, plant_seeds=seeds))
    f = result.findings
    return {"source": source, "rows": f["rows"], "planted": f["planted"], "label_errors": {
        k: f["label_errors"].get(k) for k in ("model", "out_of_fold_accuracy", "count")},
        "cross_split_found_in_data": f["duplicates"]["cross_split"]["rows"], "wall_s": wall, "cpu_s": cpu,
        "load": load}


def train_overhead(repeats: int = 3) -> dict:
    from dlforge.audit.quick import quick_checks
    from dlforge.data import prepare, read_table
    from dlforge.recipe.io import load_recipe, recipe_base_dir
    from dlforge.workflows.evaluate import derive_split

    recipe = load_recipe(Path(__file__).resolve().parents[1] / "recipes" / "adult.yaml")
    out = {"checks_wall_s": [], "checks_cpu_s": [], "read_prepare_wall_s": [], "read_prepare_cpu_s": []}
    for _ in range(repeats):
        def read_and_prepare():
            table = read_table(recipe, recipe_base_dir(recipe))
            prepare(recipe, table=table)
            return table

        table, wall, cpu, load = timed(read_and_prepare)
        out["read_prepare_wall_s"].append(wall)
        out["read_prepare_cpu_s"].append(cpu)
        rows = derive_split(recipe, table)
        checks, wall, cpu, _ = timed(lambda t=table, r=rows: quick_checks(
            t, inputs=[f.name for f in recipe.inputs], target=recipe.outputs[0].name,
            target_type=recipe.outputs[0].type, splits=r))
        out["checks_wall_s"].append(wall)
        out["checks_cpu_s"].append(cpu)
    out["lines"] = checks["lines"]
    out["load"] = round(load, 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--only", nargs="*", default=["time", "adult", "photos", "train"])
    parser.add_argument("--json", default="benchmarks/audit.json")
    args = parser.parse_args()
    results: dict = {"machine": machine()}
    if "time" in args.only:
        results["time"] = time_adult()
    if "adult" in args.only:
        results["adult"] = recall("builtin:adult", "income_gt_50k", args.seeds)
    if "photos" in args.only:
        results["photos"] = recall("builtin:tuxpaint_photos", "label", args.seeds)
    if "train" in args.only:
        results["train"] = train_overhead()
    Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    print(f"machine: {results['machine']}")
    for row in results.get("time", []):
        print(f"| {row['what']} | {row['rows']:,} | {row['wall_s']} | {row['cpu_s']} | {row['load']} |")
    for name in ("adult", "photos"):
        if name in results:
            r = results[name]
            for problem in ("cross_split_duplicates", "flipped_labels"):
                p = r["planted"].get(problem)
                if p:
                    print(f"| {name} | {problem} | {p['planted']} | {p['found']} | {p['recall']:.1%} "
                          f"(per seed {p['recall_per_seed']}) | {p['precision']:.1%} | "
                          f"{p.get('precision_raw', '')} |")
    if "train" in results:
        print(f"train: {results['train']}")


if __name__ == "__main__":
    main()
