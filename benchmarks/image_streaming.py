"""Image folders: the streaming path (DataLoader workers + uint8 disk cache) vs the in-memory path.

    PYTHONPATH=src DLFORGE_DATA=../shared/data python benchmarks/image_streaming.py [--copies 8] [--size 96]

The tuxpaint_photos train/ folder is linked `--copies` times into a temporary tree (so there are
enough files to time), then the same small MLP (light, so the data path shows) trains 3 epochs with `data.in_memory: true` and
`false`. Reported: images/s of each epoch (epoch 1 of the streaming path decodes JPEGs; later epochs
read the cache), and the in-memory path's up-front decode time.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import dlforge
from dlforge.data.builtin import data_root


class EpochTimer:
    def __init__(self):
        self.seconds: list[float] = []

    def on_epoch_start(self, trainer, epoch):
        self._start = time.perf_counter()

    def on_epoch_end(self, trainer, epoch, metrics):
        self.seconds.append(time.perf_counter() - self._start)
        return False


def make_tree(copies: int) -> Path:
    src = data_root() / "tuxpaint_photos" / "train"
    root = Path(tempfile.mkdtemp(prefix="dlforge-stream-bench-"))
    for class_dir in src.iterdir():
        (root / "train" / class_dir.name).mkdir(parents=True)
        for image in class_dir.iterdir():
            for c in range(copies):
                os.symlink(image, root / "train" / class_dir.name / f"{c}_{image.name}")
    return root


def recipe(root: Path, in_memory: bool, size: int, workers: int, cache: str) -> dict:
    return {"name": "stream", "data": {"source": str(root), "split": {"val": 0.0, "test": 0.0}, "in_memory": in_memory,
                                       "workers": workers, "cache_dir": cache},
            "inputs": [{"name": "image", "type": "image", "preprocessing": {"size": [size, size], "fit": "pad"},
                        # A deliberately light model, so that the data path (decode vs cache vs memory) shows.
                        "encoder": {"name": "mlp", "layers": [32]}}],
            "outputs": [{"name": "label", "type": "category"}],
            "training": {"epochs": 4, "batch_size": 32, "threads": 1}}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--copies", type=int, default=8)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    root = make_tree(args.copies)
    cache = tempfile.mkdtemp(prefix="dlforge-stream-cache-")
    try:
        print(f"{args.copies} x 141 tuxpaint train images at {args.size}px, batch 32, {args.workers} workers")
        print("| path | outside epochs s (decode, final eval, report) | epoch 1 img/s | epoch 2 img/s | epoch 3 img/s | epoch 4 img/s |")
        print("|---|---|---|---|---|---|")
        for in_memory in (True, False):
            timer = EpochTimer()
            started = time.perf_counter()
            run = dlforge.train(recipe(root, in_memory, args.size, args.workers, cache), out=Path(cache) / "run",
                                overwrite=True, progress=False, callbacks=[timer])
            total = time.perf_counter() - started
            n = run.metrics["data"]["rows"]["train"]
            rates = " | ".join(f"{n / s:,.0f}" for s in timer.seconds)
            prep = total - sum(timer.seconds)
            print(f"| {'in-memory' if in_memory else 'streaming'} | {prep:.1f} | {rates} |", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(cache, ignore_errors=True)


if __name__ == "__main__":
    main()
