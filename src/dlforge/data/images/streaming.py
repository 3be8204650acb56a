"""The streaming path for image files that do not fit in memory: DataLoader workers + an on-disk uint8 cache.

A split keeps its image column as `LazyImages` (paths). The first epoch decodes each image in a
worker and writes it into a uint8 memory-mapped .npy (N, C, H, W) next to a `done` mask; later
epochs read the cache, which costs a page-cache read instead of a JPEG decode. Batches are still the
index slices of the trainer's seeded permutation, so shuffling and exact resume are those of the
in-memory path.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from dlforge.data.images.files import ImagePlan, decode_file
from dlforge.core.errors import DataError


def cache_key(paths: np.ndarray, plan: ImagePlan) -> str:
    """Changes when any file, its size/mtime, or the decoding settings change."""
    digest = hashlib.sha1(f"{plan.channels}|{plan.size}|{plan.fit}|{plan.shorter}|{plan.interpolation}".encode())
    for p in paths.tolist():
        try:
            st = os.stat(p)
            digest.update(f"{p}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        except OSError:
            digest.update(f"{p}|missing\n".encode())
    return digest.hexdigest()[:16]


class ImageCache:
    """uint8 (N, C, H, W) images in a memory-mapped .npy, filled on first read. Safe across worker processes:
    each row is written by one worker before its `done` byte is set, and rows never change afterwards."""

    def __init__(self, folder: Path, paths: np.ndarray, plan: ImagePlan):
        self.folder = Path(folder)
        self.paths = paths
        self.plan = plan
        shape = (len(paths), plan.channels, *plan.size)
        self.folder.mkdir(parents=True, exist_ok=True)
        images, done = self.folder / "images.npy", self.folder / "done.npy"
        if not (images.is_file() and done.is_file()):
            # Create both files up front (sparse on most file systems), so workers only open them.
            np.lib.format.open_memmap(images, mode="w+", dtype=np.uint8, shape=shape).flush()
            np.lib.format.open_memmap(done, mode="w+", dtype=np.uint8, shape=(len(paths),)).flush()
        self._images = self._done = None  # opened lazily in each process (memmaps do not survive fork well)
        self._complete = False

    def _open(self):
        if self._images is None:
            self._images = np.load(self.folder / "images.npy", mmap_mode="r+")
            self._done = np.load(self.folder / "done.npy", mmap_mode="r+")

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_images"] = state["_done"] = None
        return state

    def fraction_cached(self) -> float:
        self._open()
        fraction = float(self._done.mean()) if len(self._done) else 1.0
        self._complete = fraction == 1.0  # from now on, reads skip the per-row `done` check
        return fraction

    def read(self, rows: np.ndarray) -> np.ndarray:
        """uint8 (B, C, H, W) for `rows`, decoding (and caching) the ones not cached yet."""
        self._open()
        rows = np.asarray(rows, dtype=np.int64)
        if self._complete:
            return self._images[rows]  # fancy indexing copies: the batch is already contiguous
        for r in rows[self._done[rows] == 0].tolist():
            try:
                hwc = decode_file(self.paths[r], channels=self.plan.channels, size=self.plan.size, fit=self.plan.fit,
                                  shorter=self.plan.shorter, interpolation=self.plan.interpolation)
            except Exception as exc:  # the header check passed, so this is a truncated or corrupt body
                raise DataError(f"image {self.paths[r]} does not decode: {type(exc).__name__}: {str(exc)[:120]}",
                                where=f"input '{self.plan.name}' (streaming)",
                                hint="fix or remove the file; the streaming path checks headers only before training") from exc
            self._images[r] = hwc.transpose(2, 0, 1)
            self._done[r] = 1
        return np.ascontiguousarray(self._images[rows])


class LazyImages:
    """An image column that decodes on access. Indexing returns the model-ready float tensor (B, C, H, W)."""

    ndim = None  # not a tensor: the trainer's channels-last conversion skips it

    def __init__(self, paths: np.ndarray, plan: ImagePlan, scale, cache_root: str | None):
        self.paths = paths
        self.plan = plan
        self.scale = scale  # the feature's uint8 → model-scale function
        root = Path(cache_root) if cache_root else Path(tempfile.gettempdir()) / "dlforge-image-cache"
        self.cache = ImageCache(root / cache_key(paths, plan), paths, plan)
        self.device = torch.device("cpu")

    def __len__(self) -> int:
        return len(self.paths)

    def to(self, device) -> "LazyImages":
        self.device = torch.device(device)
        return self

    def finish(self, uint8: torch.Tensor) -> torch.Tensor:
        return self.scale(uint8.to(self.device, non_blocking=True).float())

    def __getitem__(self, rows) -> torch.Tensor:
        index = np.arange(len(self))[rows] if isinstance(rows, slice) else np.asarray(rows)
        return self.finish(torch.from_numpy(self.cache.read(index)))

    def index_select(self, dim: int, index: torch.Tensor) -> torch.Tensor:
        return self[index.cpu().numpy()]


class _Batches(torch.utils.data.Dataset):
    """Item k of the loader is a whole batch (uint8) of the lazy columns: one worker decodes one batch."""

    def __init__(self, columns: dict[str, LazyImages]):
        self.caches = {name: col.cache for name, col in columns.items()}

    def __len__(self):
        return 0  # driven by the sampler only

    def __getitem__(self, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        index = rows.numpy()
        return {name: torch.from_numpy(cache.read(index)) for name, cache in self.caches.items()}


def streaming_epoch(x: dict, y: dict, slices, *, workers: int):
    """(x, y) batches of one epoch: lazy image columns from DataLoader workers, other columns gathered here."""
    lazy = {n: v for n, v in x.items() if isinstance(v, LazyImages)}
    slices = list(slices)
    if all(col.cache.fraction_cached() == 1.0 for col in lazy.values()):
        # Everything is decoded: reading the memory-mapped cache here is faster than starting worker processes
        # and shipping batches back to this one.
        for index in slices:
            yield ({n: v.index_select(0, index.to(v.device) if n not in lazy else index) for n, v in x.items()},
                   {n: v.index_select(0, index.to(v.device)) for n, v in y.items()})
        return
    loader = torch.utils.data.DataLoader(_Batches(lazy), batch_size=None, sampler=slices, num_workers=workers,
                                         prefetch_factor=4 if workers else None, persistent_workers=False)
    for index, images in zip(slices, loader):
        xb = {n: (lazy[n].finish(images[n]) if n in lazy else v.index_select(0, index.to(v.device)))
              for n, v in x.items()}
        yield xb, {n: v.index_select(0, index.to(v.device)) for n, v in y.items()}


def has_lazy(split) -> bool:
    return any(isinstance(v, LazyImages) for v in split.x.values())
