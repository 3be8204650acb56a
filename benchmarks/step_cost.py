"""CPU cost of one training epoch (estimated from a few steps) under each speed option, without the trainer.

For choosing recipe defaults: the seed CNN at several batch sizes in fp32, channels-last, and channels-last +
bf16 autocast; and the `resnet` encoder at several widths/depths (bf16 + channels-last, batch 128). CPU time
of this process (one thread by default), so other users of the machine disturb it less than wall time.

    PYTHONPATH=src python benchmarks/step_cost.py [--threads 1] [--part cnn|resnet|all]
"""

from __future__ import annotations

import argparse
import time
from types import SimpleNamespace

import torch
from torch import nn

EPOCH = 60_000  # MNIST / Fashion-MNIST training images


def seed_cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 32, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(32, 64, 3), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Flatten(), nn.Linear(1600, 128), nn.ReLU(), nn.Linear(128, 10))


def resnet(widths: list[int], blocks: int) -> nn.Module:
    from dlforge.models.encoders.resnet import ResNetEncoder

    encoder = ResNetEncoder(SimpleNamespace(widths=widths, blocks_per_stage=blocks, dense=[]), {"shape": [1, 28, 28]},
                            SimpleNamespace(dropout=0.0, dropconnect=0.0))
    return nn.Sequential(encoder, nn.Linear(encoder.output_dim, 10))


def epoch_cpu_seconds(model: nn.Module, batch: int, *, channels_last: bool, bf16: bool, steps: int) -> float:
    x = torch.randn(4096, 1, 28, 28)  # (N, C, H, W)
    y = torch.randint(0, 10, (4096,))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), 1e-3, foreach=True)

    def step(i: int) -> None:
        start = (i * batch) % (len(x) - batch)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(x[start:start + batch])
        loss = nn.functional.cross_entropy(out.float(), y[start:start + batch])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for i in range(3):  # oneDNN builds its kernels on the first calls
        step(i)
    started = time.process_time()
    for i in range(steps):
        step(i)
    return (time.process_time() - started) / (steps * batch) * EPOCH


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--part", choices=["cnn", "resnet", "all"], default="all")
    parser.add_argument("--rounds", type=int, default=2, help="best of this many rounds")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.part in ("cnn", "all"):
        print("| batch | fp32 | channels_last | channels_last + bf16 |  (seed CNN, CPU s per epoch)")
        print("|---|---|---|---|")
        for batch in (32, 64, 128, 256):
            cells = []
            for cl, bf in ((False, False), (True, False), (True, True)):
                best = min(epoch_cpu_seconds(seed_cnn(), batch, channels_last=cl, bf16=bf, steps=max(4, 2048 // batch))
                           for _ in range(args.rounds))
                cells.append(f"{best:.1f}")
            print(f"| {batch} | " + " | ".join(cells) + " |", flush=True)
    if args.part in ("resnet", "all"):
        print("\n| resnet widths | blocks/stage | CPU s per epoch (bf16 + channels_last, batch 128) |")
        print("|---|---|---|")
        for widths, blocks in (([16, 32, 64], 1), ([32, 64, 128], 1), ([16, 32, 64], 2), ([32, 64, 128], 2)):
            best = min(epoch_cpu_seconds(resnet(widths, blocks), 128, channels_last=True, bf16=True, steps=4)
                       for _ in range(args.rounds))
            print(f"| {widths} | {blocks} | {best:.0f} |", flush=True)


if __name__ == "__main__":
    main()
