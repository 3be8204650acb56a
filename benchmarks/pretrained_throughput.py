"""Fine-tuning throughput, dlforge vs the equivalent plain PyTorch loop, side by side in one process.

Same model (MobileNetV2 fine-tuned end to end, or MiniLM + mean pooling + linear), same tensors,
batch, optimizer and number of steps; the runs alternate (dlforge, plain, dlforge, plain, ...) so
that load from other processes hits both alike, and the median of each is reported. dlforge runs
its real Trainer.fit (one epoch, no validation); its per-epoch checkpoint write is part of its time.

    PYTHONPATH=src DLFORGE_DATA=../shared/data python benchmarks/pretrained_throughput.py --steps 12 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from dlforge.data import prepare
from dlforge.data.prepare import Encoded
from dlforge.models import build_model
from dlforge.recipe.io import load_recipe
from dlforge.training import Trainer


def image_recipe(batch: int, steps: int) -> dict:
    return {"name": "bench-img", "data": {"source": "builtin:tuxpaint_photos", "split": {"val": 0.0, "test": "official"}},
            "inputs": [{"name": "image", "type": "image", "encoder": {"name": "mobilenet_v2", "freeze": "none"}}],
            "outputs": [{"name": "label", "type": "category"}],
            "training": {"epochs": 1, "batch_size": batch, "optimizer": {"name": "adam", "lr": 1e-4}}}


def text_recipe(batch: int, steps: int) -> dict:
    return {"name": "bench-txt", "data": {"source": "builtin:rt_snippets", "max_rows": batch * steps + 2000,
                                          "split": {"val": 0.0, "test": "official"}},
            "inputs": [{"name": "text", "type": "text", "preprocessing": {"max_length": 64},
                        "encoder": {"name": "minilm", "freeze": "none"}}],
            "outputs": [{"name": "label", "type": "binary"}],
            "training": {"epochs": 1, "batch_size": batch, "optimizer": {"name": "adamw", "lr": 5e-5},
                         "sampling": "random"}}  # random batches like the plain loop: equal work


def run_dlforge(recipe, prepared, split: Encoded) -> float:
    torch.manual_seed(0)
    model = build_model(recipe, prepared.signature())
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(recipe, model, Encoded(dict(split.x), dict(split.y)), None, prepared.signature(),
                          run_dir=Path(tmp), progress=False)
        started = time.perf_counter()
        trainer.fit()
        return time.perf_counter() - started


def run_plain(recipe, prepared, split: Encoded, batch: int) -> float:
    """The loop a user would write by hand: same module, same optimizer, cross-entropy / BCE, no extras."""
    torch.manual_seed(0)
    model = build_model(recipe, prepared.signature())
    name_in = recipe.inputs[0].name
    name_out = recipe.outputs[0].name
    encoder, head = model.encoders[name_in], model.heads[name_out]
    params = [p for p in model.parameters() if p.requires_grad]
    opt_cfg = recipe.training.optimizer
    # The same update kernel dlforge's registry picks (fused), so the ratio is the trainer's own overhead.
    optimizer = (torch.optim.Adam(params, lr=opt_cfg.lr, fused=True) if opt_cfg.name == "adam"
                 else torch.optim.AdamW(params, lr=opt_cfg.lr, weight_decay=opt_cfg.weight_decay, fused=True))
    x, y = split.x[name_in], split.y[name_out]
    binary = recipe.outputs[0].type == "binary"
    model.train()
    started = time.perf_counter()
    perm = torch.randperm(len(x))
    for start in range(0, len(x), batch):
        index = perm[start:start + batch]
        logits = head.linear(encoder(x[index])) if hasattr(head, "linear") else head(encoder(x[index]))
        target = y[index]
        loss = (torch.nn.functional.binary_cross_entropy_with_logits(logits.view(-1), target.float().view(-1)) if binary
                else torch.nn.functional.cross_entropy(logits, target.view(-1).long()))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return time.perf_counter() - started


def bench(kind: str, batch: int, steps: int, repeats: int) -> dict:
    recipe = load_recipe((image_recipe if kind == "image" else text_recipe)(batch, steps))
    prepared = prepare(recipe)
    train = prepared.splits["train"]
    rows = min(len(train), batch * steps)
    split = Encoded({k: v[:rows] for k, v in train.x.items()}, {k: v[:rows] for k, v in train.y.items()})
    ours, plain = [], []
    for _ in range(repeats):
        ours.append(run_dlforge(recipe, prepared, split))
        plain.append(run_plain(recipe, prepared, split, batch))
    a, b = statistics.median(ours), statistics.median(plain)
    unit = "images" if kind == "image" else "sentences"
    return {"kind": kind, "rows": rows, "batch": batch, "dlforge_s": round(a, 2), "plain_s": round(b, 2),
            "ratio": round(a / b, 3), f"dlforge_{unit}_per_s": round(rows / a, 1), f"plain_{unit}_per_s": round(rows / b, 1),
            "all_dlforge_s": [round(t, 2) for t in ours], "all_plain_s": [round(t, 2) for t in plain]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--kinds", default="image,text")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for kind in args.kinds.split(","):
        print(json.dumps(bench(kind, 16 if kind == "image" else 32, args.steps, args.repeats)), flush=True)


if __name__ == "__main__":
    main()
