"""The in-memory fast path: every batch is an index slice of a seeded permutation of preloaded tensors."""

from __future__ import annotations

import torch


def gather(tensors: dict[str, torch.Tensor], index: torch.Tensor) -> dict[str, torch.Tensor]:
    return {name: t.index_select(0, index) for name, t in tensors.items()}


class InMemoryBatches:
    """Shuffled batches over tensors already in memory; no DataLoader, no per-sample Python.

    The permutation comes from a dedicated generator whose state is checkpointed, so a resumed run
    sees exactly the batches an uninterrupted one would.
    """

    def __init__(self, n_rows: int, batch_size: int, *, seed: int, drop_last: bool = False):
        self.n_rows = n_rows
        self.batch_size = min(batch_size, n_rows)
        self.drop_last = drop_last
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        full, rest = divmod(self.n_rows, self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def permutation(self) -> torch.Tensor:
        return torch.randperm(self.n_rows, generator=self.generator)

    def slices(self, permutation: torch.Tensor, start_step: int = 0):
        """Index tensors of each batch of one epoch, from `start_step` on."""
        for step in range(start_step, len(self)):
            yield permutation[step * self.batch_size:(step + 1) * self.batch_size]


def epoch_batches(split, slices, *, workers: int = 0):
    """(x, y) of each batch of one epoch: index slices of in-memory tensors, or the streaming path
    (DataLoader workers + decoded-image cache) when the split has lazily decoded image columns."""
    from dlforge.data.streaming import has_lazy, streaming_epoch

    if has_lazy(split):
        yield from streaming_epoch(split.x, split.y, slices, workers=workers)
        return
    for index in slices:
        yield gather(split.x, index), gather(split.y, index)


def eval_batches(n_rows: int, batch_size: int):
    for start in range(0, n_rows, batch_size):
        yield slice(start, min(start + batch_size, n_rows))
