"""Frozen-feature fast path: training a head on cached backbone embeddings vs recomputing the backbone every step.

Same recipe (frozen ImageNet backbone, Dense 128 head, tuxpaint_photos), same epochs, one process;
the cached run includes computing and writing the embeddings once (cold cache in a temp folder),
and a second cached run shows a warm cache (embeddings read from disk).

    PYTHONPATH=src DLFORGE_DATA=../shared/data python benchmarks/frozen_cache.py --epochs 5
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from dlforge.data import prepare
from dlforge.data.prepare import Encoded
from dlforge.models import build_model
from dlforge.recipe.io import load_recipe
from dlforge.training import Trainer
from dlforge.training.feature_cache import apply_feature_cache


def recipe(backbone: str, epochs: int):
    return load_recipe({"name": "bench-cache", "data": {"source": "builtin:tuxpaint_photos",
                                                       "split": {"val": 0.15, "test": "official"}},
                        "inputs": [{"name": "image", "type": "image",
                                    "encoder": {"name": backbone, "freeze": "all", "dense": [128]}}],
                        "outputs": [{"name": "label", "type": "category"}],
                        "training": {"epochs": epochs, "batch_size": 16, "optimizer": {"name": "adam", "lr": 1e-3}}})


def one(r, prepared, *, cached: bool) -> tuple[float, float]:
    torch.manual_seed(0)
    model = build_model(r, prepared.signature())
    splits = {k: Encoded(dict(v.x), dict(v.y)) for k, v in prepared.splits.items()}
    started = time.perf_counter()
    if cached:
        apply_feature_cache(r, model, splits)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(r, model, splits["train"], splits["val"], prepared.signature(), run_dir=Path(tmp), progress=False)
        trainer.fit()
        total = time.perf_counter() - started
        accuracy = trainer.evaluate(splits["test"])["accuracy"]
    return total, accuracy


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--backbone", default="mobilenet_v2")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    r = recipe(args.backbone, args.epochs)
    prepared = prepare(r)
    with tempfile.TemporaryDirectory() as cache:
        os.environ["DLFORGE_CACHE"] = cache
        cold, acc_cold = one(r, prepared, cached=True)
        warm, acc_warm = one(r, prepared, cached=True)
        every, acc_every = one(r, prepared, cached=False)
    print(json.dumps({"backbone": args.backbone, "epochs": args.epochs, "train_rows": len(prepared.splits["train"]),
                      "backbone_every_step_s": round(every, 1), "cached_cold_s": round(cold, 1),
                      "cached_warm_s": round(warm, 1), "speedup_cold": round(every / cold, 1),
                      "speedup_warm": round(every / warm, 1),
                      "test_accuracy": {"every_step": acc_every, "cached_cold": acc_cold, "cached_warm": acc_warm}}))


if __name__ == "__main__":
    main()
