"""MovieLens 100K recommendation figures over seeds, and recommend latency (benchmarks/recsys.md).

For each recipe (movielens_ranking, movielens_rating) and seed, one `dlforge.train()` with `training.seed=SEED`
(the split is the data's own), one after another in this process; each result is appended at once to
benchmarks/recsys.jsonl (test metrics, the sampled protocol, the most-popular baseline, train_seconds, the
process CPU seconds of the run, the load average before and after, the CPU model), so an interrupted sweep
continues where it stopped. Then the latency of `Predictor.recommend` for one user over all items (p50, p90 of
single calls; and one call for 64 users) on the seed-0 ranking run. It prints min and mean per metric.

    PYTHONPATH=src DLFORGE_DATA=../shared/data DLFORGE_TRACKING=off nice -n 5 python benchmarks/recsys.py
    python benchmarks/recsys.py --recipes movielens_rating --seeds 0,1,2
    python benchmarks/recsys.py --latency-only
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from recipes import load_average, machine  # noqa: E402

RESULTS = ROOT / "benchmarks" / "recsys.jsonl"
RANKING = ("hr@10", "ndcg@10", "recall@50", "mrr", "coverage@10")
RECIPES = {"movielens_ranking": RANKING, "movielens_rating": ("rmse", "mae"),
           # the other two models on the ranking recipe's protocol (benchmarks/recsys_models/)
           "movielens_two_tower": RANKING, "movielens_neumf": RANKING}


def recipe_path(recipe: str) -> Path:
    shipped = ROOT / "recipes" / f"{recipe}.yaml"
    return shipped if shipped.exists() else ROOT / "benchmarks" / "recsys_models" / f"{recipe}.yaml"


def done(recipe: str, seed: int) -> bool:
    if not RESULTS.exists():
        return False
    return any((r["recipe"], r["seed"]) == (recipe, seed) for r in map(json.loads, RESULTS.read_text().splitlines()))


def train_one(recipe: str, seed: int, out: Path, info: dict) -> dict:
    import dlforge

    load_before, cpu_before = load_average(), time.process_time()
    result = dlforge.train(str(recipe_path(recipe)), out=out, overrides=[f"training.seed={seed}"],
                           progress=False, overwrite=True)
    m = result.metrics
    return {"recipe": recipe, "seed": seed, "test": m.get("test"), "val": m.get("val"), "sampled": m.get("sampled"),
            "baseline": m.get("baseline"), "train_seconds": m["train_seconds"], "epochs_run": m["epochs_run"],
            "best_epoch": m["best_epoch"], "cpu_seconds": round(time.process_time() - cpu_before, 1),
            "load_before": load_before, "load_after": load_average(), "date": time.strftime("%Y-%m-%d %H:%M"),
            **info}


def latency(run: Path, repeats: int = 300) -> dict:
    """Recommend for one user over all items (exclude seen), single calls; then one batched call of 64 users."""
    import dlforge

    predictor = dlforge.load(run)
    recommender = predictor.recommender()
    users = predictor.inputs[recommender.model.user_input].vocabulary_[1:]
    for user in users[:20]:  # warm up
        predictor.recommend(user, k=10)
    times = []
    for i in range(repeats):
        started = time.perf_counter()
        predictor.recommend(users[i % len(users)], k=10)
        times.append((time.perf_counter() - started) * 1e3)
    from dlforge.artifact.recommend import Query

    started = time.perf_counter()
    recommender.run([Query(user=u, k=10) for u in users[:64]])
    batch = (time.perf_counter() - started) * 1e3
    times.sort()
    return {"p50_ms": round(times[len(times) // 2], 3), "p90_ms": round(times[int(len(times) * 0.9)], 3),
            "batch64_ms": round(batch, 3), "items": recommender.model.n_items - 1, "repeats": repeats,
            "load": load_average()}


def summary(rows: list[dict]) -> None:
    for recipe, names in RECIPES.items():
        mine = [r for r in rows if r["recipe"] == recipe]
        if not mine:
            continue
        print(f"{recipe}: seeds {sorted(r['seed'] for r in mine)}")
        for name in names:
            values = [r["test"][name] for r in mine]
            print(f"  test {name}: min {min(values):.4f} mean {statistics.mean(values):.4f} max {max(values):.4f}")
        if names == RANKING:
            for label, pick in (("sampled hr@10", lambda r: r["sampled"]["test"]["hr@10"]),
                                ("most popular full hr@10", lambda r: r["baseline"]["most_popular"]["hr@10"]),
                                ("most popular sampled hr@10",
                                 lambda r: r["baseline"]["most_popular_sampled"]["hr@10"])):
                values = [pick(r) for r in mine]
                print(f"  {label}: min {min(values):.4f} mean {statistics.mean(values):.4f}")
        else:
            gap = [r["test"]["rmse"] - r["val"]["rmse"] for r in mine]
            val = ", ".join(f"{r['val']['rmse']:.4f}" for r in mine)
            print(f"  val rmse: {val}; test - val: mean {statistics.mean(gap):+.4f}")
        print(f"  train_seconds: {', '.join(str(r['train_seconds']) for r in mine)}; cpu_seconds: "
              f"{', '.join(str(r['cpu_seconds']) for r in mine)}; load {mine[0]['load_before']}-{mine[-1]['load_after']}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", nargs="*", default=["movielens_ranking", "movielens_rating"],
                        help=f"any of {', '.join(RECIPES)}")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--latency-only", action="store_true")
    parser.add_argument("--no-latency", action="store_true", help="skip the latency (it trains a seed-0 ranking run)")
    args = parser.parse_args(argv)
    os.environ.setdefault("DLFORGE_TRACKING", "off")
    import torch

    torch.set_num_threads(1)
    info = machine()
    out = Path(tempfile.mkdtemp(prefix="recsys-"))
    seeds = [int(s) for s in args.seeds.split(",")]
    if not args.latency_only:
        for recipe in args.recipes:
            for seed in seeds:
                if done(recipe, seed):
                    continue
                row = train_one(recipe, seed, out / f"{recipe}-{seed}", info)
                with RESULTS.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                print(f"{recipe} seed {seed}: {json.dumps(row['test'])}", flush=True)
    rows = [json.loads(line) for line in RESULTS.read_text().splitlines()] if RESULTS.exists() else []
    summary(rows)
    if args.no_latency:
        return
    run = out / "movielens_ranking-0"
    if not (run / "model.json").exists():
        train_one("movielens_ranking", 0, run, info)
    print(f"latency ({info['cpu']}, torch threads 1): {json.dumps(latency(run))}")


if __name__ == "__main__":
    main()
