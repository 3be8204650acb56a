"""Federated MNIST (recipes/mnist_federated.yaml, McMahan et al. 2017's CNN setting): rounds to an accuracy,
wall and CPU time of the in-process simulation, and the same recipe with 3 real client processes over gRPC.

    python benchmarks/federated.py sim --partition iid --rounds 40 --target-accuracy 0.99 --seed 1 --out runs/fed_iid_s1
    python benchmarks/federated.py sim --partition shards:2 --rounds 50 --out runs/bench_fed_noniid
    python benchmarks/federated.py sim --val 0.1 --rounds 12 --set training.optimizer.lr=0.1 --out runs/fed_lr01
    python benchmarks/federated.py procs --rounds 1 --set federated.local_epochs=1 --out runs/bench_fed_procs

Each prints one JSON line: the per-round test accuracy (validation with --val), rounds to 90/95/97/98/99%, wall and CPU seconds (this process
and its children), the CPU model and the load average before and after. Results: benchmarks/federated.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "mnist_federated.yaml"


def cpu_seconds() -> float:
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def read_history(run_dir: Path) -> list[dict]:
    with open(run_dir / "history.csv", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def summary(run_dir: Path, started: float, cpu0: float, load0, extra: dict) -> dict:
    from dlforge.core.machine import cpu_model

    history = read_history(run_dir)
    split = "test" if history and "test.accuracy" in history[0] else "val"
    acc = [round(float(r[f"{split}.accuracy"]), 4) for r in history]
    to = {f"{t:.2f}": next((i + 1 for i, a in enumerate(acc) if a >= t), None) for t in (0.9, 0.95, 0.97, 0.98, 0.99)}
    return {**extra, "rounds_run": len(history), f"{split}_accuracy_by_round": acc, "rounds_to": to,
            "failures": sum(int(float(r.get("failures") or 0)) for r in history),
            "wall_seconds": round(time.perf_counter() - started, 1), "cpu_seconds": round(cpu_seconds() - cpu0, 1),
            "cpu": cpu_model(), "load_before": load0, "load_after": os.getloadavg(), "run_dir": str(run_dir)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["sim", "procs"])
    parser.add_argument("--partition", default="iid")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--out", required=True)
    parser.add_argument("--set", dest="sets", action="append", default=[])
    parser.add_argument("--port", type=int, default=19192)
    parser.add_argument("--seed", type=int, default=None, help="training.seed: partition, initial weights, client "
                                                                "sampling and the clients' shuffles")
    parser.add_argument("--target-accuracy", type=float, default=None,
                        help="sim: stop after the first round whose test accuracy reaches this (--rounds: the most)")
    parser.add_argument("--val", type=float, default=None,
                        help="sim: hold out this fraction of the training rows (data.split.val) and score only it "
                             "each round (federated.evaluate=val; the test rows are never scored): for tuning")
    args = parser.parse_args()
    os.environ.setdefault("DLFORGE_TRACKING", "off")
    started, cpu0, load0 = time.perf_counter(), cpu_seconds(), os.getloadavg()
    out = Path(args.out)
    sets = ["training.threads=1", *([f"training.seed={args.seed}"] if args.seed is not None else []),
            *([f"data.split.val={args.val}", "federated.evaluate=val"] if args.val is not None else []), *args.sets]
    if args.mode == "sim":
        from dlforge.federated import simulate

        simulate(RECIPE, out=out, overwrite=True, overrides=sets, rounds=args.rounds, partition=args.partition,
                 target_accuracy=args.target_accuracy)
        extra = {"mode": "simulation", "partition": args.partition, "sets": sets, "max_rounds": args.rounds,
                 "target_accuracy": args.target_accuracy}
    else:
        cli = [sys.executable, "-m", "dlforge.cli", "federate"]
        flags = [x for s in sets for x in ("--set", s)]
        address = f"127.0.0.1:{args.port}"
        server = subprocess.Popen([*cli, "server", str(RECIPE), "--address", address, "--clients", "3",
                                   "--rounds", str(args.rounds), "--out", str(out), "--overwrite", *flags])
        clients = [subprocess.Popen([*cli, "client", str(RECIPE), "--server", address, "--partition", f"{k}/3",
                                     *flags]) for k in (1, 2, 3)]
        codes = [c.wait() for c in clients] + [server.wait()]
        extra = {"mode": "3 client processes + 1 server over gRPC (loopback)", "exit_codes": codes,
                 "partition": "iid thirds (recipe's scheme, 3 clients), all 3 clients every round", "sets": sets}
    print(json.dumps(summary(out, started, cpu0, load0, extra)), flush=True)


if __name__ == "__main__":
    main()
