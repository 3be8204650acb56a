"""The frozen-feature fast path: a backbone frozen for the whole run, with no augmentation on its input,
maps each example to the same embedding every epoch, so compute it once per dataset, cache it on disk,
and train only what follows (the head trains in seconds).

The cache key hashes the input tensor bytes, the backbone's weights and its pooling, so a change
to the data, the preprocessing or the weights can never reuse stale embeddings. Files are
safetensors (no pickle), written atomically. Set DLFORGE_CACHE to move the cache (default
~/.cache/dlforge); the run's metrics say whether the cache was hit.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import torch

from dlforge.core.files import atomic_path
from dlforge.data.augment import augmentation_on
from dlforge.models.encoders.base import Backbone

CHUNK = 64  # images per backbone forward pass while embedding: bounds activation memory


def cache_root() -> Path:
    return Path(os.environ.get("DLFORGE_CACHE", Path.home() / ".cache" / "dlforge")) / "features"


def cacheable(recipe, model) -> dict[str, str]:
    """{input name: why} for every backbone input, with the reason it is or is not cached."""
    out = {}
    for feature in recipe.inputs:
        encoder = model.encoders[feature.name] if feature.name in model.encoders else None
        if not isinstance(encoder, Backbone):
            continue
        if not encoder.fully_frozen:
            out[feature.name] = "backbone trains (freeze is not 'all' or unfreeze_at_epoch is set): it runs every step"
        elif augmentation_on(feature):
            out[feature.name] = "augmentation is on: the frozen backbone runs on every augmented batch"
        else:
            out[feature.name] = "cached"
    return out


def _digest(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor.detach().cpu().contiguous().numpy().tobytes()).hexdigest()


def backbone_digest(encoder) -> str:
    h = hashlib.sha256(f"{encoder.config.name}|{getattr(encoder, 'pooling', '')}".encode())
    for name, tensor in encoder.backbone.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


@torch.no_grad()
def embed_all(encoder, x, *, device: torch.device) -> torch.Tensor:
    was_training = encoder.training
    encoder.eval()
    parts = [encoder.embed(x[s:s + CHUNK].to(device)).float().cpu() for s in range(0, len(x), CHUNK)]
    encoder.train(was_training)
    return torch.cat(parts) if parts else torch.empty(0, encoder.embed_dim)


def apply_feature_cache(recipe, model, splits: dict, *, device: torch.device) -> dict:
    """Replace cacheable backbone inputs of every split by their embeddings; returns a report for metrics/plan.

    `device` is the strategy's (build_training passes it): embedding on the CPU while training runs on a GPU
    would spend the one expensive pass on the slow device. Embeddings are stored and returned on the CPU.
    """
    from safetensors.torch import load_file, save_file

    report: dict = {}
    for name, why in cacheable(recipe, model).items():
        if why != "cached" or not all(isinstance(s.x[name], torch.Tensor) for s in splits.values()):
            report[name] = {"path": "backbone every step", "reason": why if why != "cached" else "streamed images"}
            continue
        encoder = model.encoders[name]
        model_key = backbone_digest(encoder)
        hits, seconds = 0, 0.0
        for split in splits.values():
            key = hashlib.sha256(f"{model_key}|{_digest(split.x[name])}".encode()).hexdigest()[:32]
            path = cache_root() / f"{key}.safetensors"
            if path.is_file():
                split.x[name] = load_file(str(path))["embedding"]
                hits += 1
            else:
                started = time.perf_counter()
                embedding = embed_all(encoder.to(device), split.x[name], device=device)
                seconds += time.perf_counter() - started
                with atomic_path(path) as tmp:
                    save_file({"embedding": embedding.contiguous()}, str(tmp))
                split.x[name] = embedding
        encoder.cached_input = True
        report[name] = {"path": "cached embeddings", "cache_hits": hits, "splits": len(splits),
                        "embed_seconds": round(seconds, 3), "dim": encoder.embed_dim}
    return report


def release_feature_cache(model) -> None:
    """Back to raw inputs (for saving/serving): the cached flag is a training-time shortcut only."""
    for module in model.modules():
        if isinstance(module, Backbone):
            module.cached_input = False
