"""Text training throughput: dlforge's Trainer vs the same model in a plain PyTorch loop, side by side.

    PYTHONPATH=src DLFORGE_DATA=../shared/data python benchmarks/text_throughput.py [--rows 4096] [--repeats 3]

Both train the same `DlforgeModel` (same init, Adam, same batch size and shuffled index batches) on
the same encoded rt_snippets rows for one epoch. dlforge's time includes what it does beyond the bare
loop (loss accumulation on device, progress callbacks, the end-of-epoch checkpoint), not data
preparation. Runs alternate (plain, dlforge, plain, ...) and the best of `--repeats` is kept, to damp
noise from other processes. Tokens/s counts non-padding tokens.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from dlforge.data.prepare import prepare
from dlforge.models import build_model
from dlforge.recipe.io import load_recipe
from dlforge.training import Trainer

ENCODERS = {
    "transformer": {"name": "transformer", "dim": 64, "heads": 4, "layers": 2, "ff_dim": 128, "dropout": 0.1},
    "lstm": {"name": "lstm", "dim": 64, "hidden": 64, "bidirectional": True, "pooling": "max"},
}


def recipe_for(encoder: dict, rows: int, batch: int):
    return load_recipe({
        "name": "bench", "data": {"source": "builtin:rt_snippets", "max_rows": rows, "split": {"val": 0.0, "test": 0.0}},
        "inputs": [{"name": "text", "type": "text", "encoder": encoder,
                    "preprocessing": {"vocab_size": 8000, "max_length": 64}}],
        "outputs": [{"name": "label", "type": "binary"}],
        "training": {"epochs": 1, "batch_size": batch, "optimizer": {"name": "adam", "lr": 1e-3}}})


def plain_loop(recipe, prepared) -> float:
    torch.manual_seed(0)
    model = build_model(recipe, prepared.signature())
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = prepared.splits["train"].x, prepared.splits["train"].y
    n, batch = len(prepared.splits["train"]), recipe.training.batch_size
    generator = torch.Generator().manual_seed(1)
    started = time.perf_counter()
    model.train()
    order = torch.randperm(n, generator=generator)
    for start in range(0, n, batch):
        index = order[start:start + batch]
        loss = model.loss(model({k: v[index] for k, v in x.items()}), {k: v[index] for k, v in y.items()})
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return time.perf_counter() - started


def dlforge_loop(recipe, prepared) -> float:
    torch.manual_seed(0)
    model = build_model(recipe, prepared.signature())
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(recipe, model, prepared.splits["train"], None, prepared.signature(), run_dir=run_dir,
                          progress=False)
        started = time.perf_counter()
        trainer.fit()
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", nargs="*", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"rt_snippets, {args.rows} rows, batch {args.batch}, {args.threads} thread(s), best of {args.repeats}")
    print("| encoder | tokens | plain PyTorch s | dlforge s | ratio | dlforge tokens/s |")
    print("|---|---|---|---|---|---|")
    for name, encoder in ENCODERS.items():
        if args.only and name not in args.only:
            continue
        recipe = recipe_for(encoder, args.rows, args.batch)
        prepared = prepare(recipe)
        tokens = int((prepared.splits["train"].x["text"] != 0).sum())
        plain, ours = [], []
        for _ in range(args.repeats):
            plain.append(plain_loop(recipe, prepared))
            ours.append(dlforge_loop(recipe, prepared))
        p, d = min(plain), min(ours)
        print(f"| {name} | {tokens} | {p:.2f} | {d:.2f} | {d / p:.3f} | {tokens / d:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
