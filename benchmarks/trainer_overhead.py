"""Trainer overhead: one MNIST epoch (batch 64) through dlforge vs two plain PyTorch loops, side by side.

Three ways, same architecture, same data, same batch size, same optimizer (Adam 1e-3):
  a  dlforge       the real code path: recipe -> prepare() -> build_model() -> Trainer.fit() (one epoch,
                   incl. its end-of-epoch checkpoint), progress bar off
  b  seed loop     the seed article's loop: TensorDataset + DataLoader(batch_size=64, shuffle=True),
                   zero_grad / backward / step, `running_loss += loss.item()` each step
  c  hand-tuned    preloaded tensors, a randperm, index_select slices, zero_grad(set_to_none), fused Adam,
                   no per-step host sync

Each (model, way) run is its own subprocess, so its peak RSS (ru_maxrss) is its own, and the runs are
interleaved in a shuffled order for `--repeats` rounds: the machine is shared (2 cores, other users),
so a load burst hits all ways alike, and the *median* of each way is reported. Only the epoch is timed
(data loading and model building are not).

    PYTHONPATH=src DLFORGE_DATA=../shared/data python benchmarks/trainer_overhead.py --repeats 3

`--baseline-src OTHER/src` adds a fourth way, z: way a's code path run from another checkout's `src`
(e.g. the previous commit), interleaved with the others, and prints the ratio a / z: the check that a
change to the trainer left plain single-process training exactly as fast.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

WAYS = {"a": "dlforge", "b": "seed loop (DataLoader)", "c": "hand-tuned loop", "z": "dlforge (baseline src)"}
BATCH = 64


class _Clock:
    """Wall and CPU seconds of this process: CPU time is far less disturbed by other users of the cores."""

    def __init__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def stop(self) -> tuple[float, float]:
        return time.perf_counter() - self.wall, time.process_time() - self.cpu


def _mnist_train() -> tuple[torch.Tensor, torch.Tensor]:
    from dlforge.data.builtin import data_root

    with np.load(data_root() / "mnist" / "mnist.npz") as archive:
        x, y = archive["x_train"], archive["y_train"]
    x = (torch.from_numpy(x).float().unsqueeze(1) / 255.0 - 0.5) / 0.5  # (N, 1, 28, 28), the seed's scaling
    return x, torch.from_numpy(y).long()


def _plain_model(kind: str) -> nn.Module:
    """The same layers dlforge builds for the recipe below (checked by parameter count)."""
    if kind == "mlp":
        return nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(),
                             nn.Linear(128, 10))
    return nn.Sequential(nn.Conv2d(1, 32, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(32, 64, 3), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Flatten(), nn.Linear(64 * 5 * 5, 128), nn.ReLU(), nn.Linear(128, 10))


def _recipe(kind: str) -> dict:
    encoder = ({"name": "mlp", "layers": [256, 128]} if kind == "mlp"
               else {"name": "cnn", "channels": [32, 64], "kernel_size": 3, "dense": [128]})
    return {"name": f"bench-{kind}",
            "data": {"source": "builtin:mnist", "split": {"val": 0.0, "test": "official"}},
            "inputs": [{"name": "image", "type": "image", "preprocessing": {"scale": "symmetric"}, "encoder": encoder}],
            "outputs": [{"name": "label", "type": "category"}],
            "training": {"epochs": 1, "batch_size": BATCH, "optimizer": {"name": "adam", "lr": 1e-3}, "seed": 0}}


def run_dlforge(kind: str) -> tuple[float, float]:
    from dlforge.data import prepare
    from dlforge.models import build_model
    from dlforge.recipe.io import load_recipe
    from dlforge.training import Trainer

    recipe = load_recipe(_recipe(kind))
    prepared = prepare(recipe)
    torch.manual_seed(0)
    model = build_model(recipe, prepared.signature())
    expected = sum(p.numel() for p in _plain_model(kind).parameters())
    assert sum(p.numel() for p in model.parameters()) == expected, "dlforge built a different network"
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(recipe, model, prepared.splits["train"], None, prepared.signature(), run_dir=Path(run_dir),
                          progress=False)
        clock = _Clock()
        trainer.fit()
        return clock.stop()


def run_seed_loop(kind: str) -> tuple[float, float]:
    from torch.utils.data import DataLoader, TensorDataset

    x, y = _mnist_train()
    torch.manual_seed(0)
    model = _plain_model(kind)
    loader = DataLoader(TensorDataset(x, y), batch_size=BATCH, shuffle=True)
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    clock = _Clock()
    model.train()
    running_loss = 0.0
    for images, labels in loader:
        optimizer.zero_grad()
        loss = criterion(model(images), labels)
        loss.backward()
        optimizer.step()
        running_loss += loss.item()
    return clock.stop()


def run_hand_tuned(kind: str) -> tuple[float, float]:
    x, y = _mnist_train()
    torch.manual_seed(0)
    model = _plain_model(kind)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)  # the kernel dlforge picks
    clock = _Clock()
    model.train()
    permutation = torch.randperm(len(x))
    loss_sum = torch.zeros(())
    for start in range(0, len(x), BATCH):
        index = permutation[start:start + BATCH]
        loss = nn.functional.cross_entropy(model(x.index_select(0, index)), y.index_select(0, index))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += loss.detach()
    float(loss_sum)  # one sync at the end, as dlforge does at epoch end
    return clock.stop()


RUNNERS = {"a": run_dlforge, "b": run_seed_loop, "c": run_hand_tuned}


def _raise_mmap_threshold() -> None:
    """Allocate and free one 32 MB buffer, as dlforge's data preparation happens to do.

    glibc serves large allocations with mmap and returns them with munmap unless a buffer of that size was
    freed before (its "dynamic mmap threshold", capped at 32 MB). A loop that never freed a large buffer then
    maps, page-faults and zeroes each step's activations afresh: on the seed CNN, 3 million page faults and
    ~6 s of system time per epoch here. Doing this in every way measures the loops, not the allocator's state.
    """
    buffer = torch.empty(32 * 2**20 - 4096, dtype=torch.uint8)
    buffer.fill_(0)
    del buffer


def worker(kind: str, way: str, threads: int, same_allocator: bool) -> None:
    torch.set_num_threads(threads)
    if same_allocator:
        _raise_mmap_threshold()
    wall, cpu = RUNNERS[way](kind)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    print(json.dumps({"kind": kind, "way": way, "seconds": wall, "cpu_seconds": cpu, "peak_rss_mb": peak_mb}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["mlp", "cnn"], choices=["mlp", "cnn"])
    parser.add_argument("--ways", nargs="+", default=["a", "b", "c"], choices=list(WAYS))
    parser.add_argument("--baseline-src", type=Path, default=None,
                        help="another checkout's src/: adds way z (dlforge from there) and prints the ratio a / z")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--raw-allocator", action="store_true",
                        help="skip the 32 MB allocate-and-free that gives every way the same malloc state")
    parser.add_argument("--worker", nargs=2, metavar=("MODEL", "WAY"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(*args.worker, args.threads, not args.raw_allocator)
        return
    if args.baseline_src is not None and "z" not in args.ways:
        args.ways.append("z")
    results: dict[tuple[str, str], list[dict]] = {}
    rng = random.Random(0)
    for repeat in range(args.repeats):
        for kind in args.models:
            order = list(args.ways)
            rng.shuffle(order)
            for way in order:
                flags = ["--threads", str(args.threads)] + (["--raw-allocator"] if args.raw_allocator else [])
                env = dict(os.environ)
                if way == "z":  # the same runner, importing dlforge from the baseline checkout
                    env["PYTHONPATH"] = str(args.baseline_src.resolve())
                out = subprocess.run([sys.executable, __file__, "--worker", kind, "a" if way == "z" else way, *flags],
                                     check=True, capture_output=True, text=True, env=env).stdout
                row = json.loads(out.strip().splitlines()[-1])
                results.setdefault((kind, way), []).append(row)
                print(f"round {repeat + 1}  {kind}  {WAYS[way]:<24} wall {row['seconds']:7.2f} s  "
                      f"cpu {row['cpu_seconds']:7.2f} s  peak RSS {row['peak_rss_mb']:6.0f} MB", flush=True)
    print(f"\n{args.repeats} rounds, {args.threads} thread(s). Ratios are to the hand-tuned loop (c): best wall "
          "(least-disturbed run) and median CPU seconds.")
    print("| model | way | best wall s/epoch | median wall | median CPU s | x (c), best wall | x (c), median CPU "
          "| peak RSS (MB) |")
    print("|---|---|---|---|---|---|---|---|")
    for kind in args.models:
        base = results.get((kind, "c"))
        base_wall = min(r["seconds"] for r in base) if base else float("nan")
        base_cpu = statistics.median(r["cpu_seconds"] for r in base) if base else float("nan")
        for way in args.ways:
            rows = results[(kind, way)]
            wall = min(r["seconds"] for r in rows)
            cpu = statistics.median(r["cpu_seconds"] for r in rows)
            print(f"| {kind} | {WAYS[way]} | {wall:.2f} | {statistics.median(r['seconds'] for r in rows):.2f} | "
                  f"{cpu:.2f} | {wall / base_wall:.3f} | {cpu / base_cpu:.3f} | "
                  f"{max(r['peak_rss_mb'] for r in rows):.0f} |")
        if (kind, "z") in results and (kind, "a") in results:
            a, z = results[(kind, "a")], results[(kind, "z")]
            print(f"{kind}: dlforge / baseline = {min(r['seconds'] for r in a) / min(r['seconds'] for r in z):.3f} "
                  f"(best wall), {statistics.median(r['cpu_seconds'] for r in a) / statistics.median(r['cpu_seconds'] for r in z):.3f} "
                  "(median CPU)")


if __name__ == "__main__":
    main()
