"""The in-memory fast path: every batch is an index slice of a seeded permutation of preloaded tensors.

The permutation lives on the CPU (its generator's state is checkpointed, and the streaming path reads it
with numpy); `gather` moves each batch's index to the device of the tensors it selects from, once per
device, so data placed on a GPU by the strategy is indexed there.
"""

from __future__ import annotations

import torch


def gather(tensors: dict[str, torch.Tensor], index: torch.Tensor) -> dict[str, torch.Tensor]:
    """Rows `index` of every tensor. A CPU index into CUDA tensors fails in `index_select`, so it is copied to
    each tensors' device first (one small copy per batch and device; none when they share the index's device)."""
    on_device = {index.device: index}
    out = {}
    for name, t in tensors.items():
        moved = on_device.get(t.device)
        if moved is None:
            moved = on_device[t.device] = index.to(t.device, non_blocking=True)
        out[name] = t.index_select(0, moved)
    return out


class InMemoryBatches:
    """Shuffled batches over tensors already in memory; no DataLoader, no per-sample Python.

    The permutation comes from a dedicated generator whose state is checkpointed, so a resumed run
    sees exactly the batches an uninterrupted one would.
    """

    # Rows are grouped by length within windows of this many batches: wide enough that most batches hold
    # rows of one length, narrow enough that a window still mixes the data (fastai's SortishSampler and
    # Hugging Face's group_by_length use 50 as well).
    LENGTH_WINDOW_BATCHES = 50

    def __init__(self, n_rows: int, batch_size: int, *, seed: int, drop_last: bool = False,
                 lengths: torch.Tensor | None = None):
        self.n_rows = n_rows
        self.batch_size = min(batch_size, n_rows)
        self.drop_last = drop_last
        self.generator = torch.Generator().manual_seed(seed)
        # Per-row token counts (CPU): when given, each epoch's batches hold rows of similar length.
        self.lengths = None if lengths is None else lengths.detach().cpu().long()

    def __len__(self) -> int:
        full, rest = divmod(self.n_rows, self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def permutation(self) -> torch.Tensor:
        shuffled = torch.randperm(self.n_rows, generator=self.generator)
        return shuffled if self.lengths is None else self._grouped_by_length(shuffled)

    def _grouped_by_length(self, shuffled: torch.Tensor) -> torch.Tensor:
        """Sort each window of the shuffled rows by length, then shuffle the (full) batches.

        A batch of similar lengths carries little padding, and encoders that trim or pack padding (minilm,
        lstm/gru) then spend their time on real tokens. The longest batch goes first, so that running out of
        memory shows in the first step rather than hours in. Deterministic under the batch generator, and
        the permutation is checkpointed, so resume stays exact.
        """
        window = self.batch_size * self.LENGTH_WINDOW_BATCHES
        parts = []
        for start in range(0, self.n_rows, window):
            rows = shuffled[start:start + window]
            parts.append(rows[torch.sort(self.lengths[rows], descending=True, stable=True).indices])
        grouped = torch.cat(parts)
        full = self.n_rows // self.batch_size  # a partial last batch stays last: batch count and sizes unchanged
        batches = grouped[:full * self.batch_size].view(full, self.batch_size)
        batches = batches[torch.randperm(full, generator=self.generator)]
        longest = int(self.lengths[batches].amax(1).argmax())
        batches[[0, longest]] = batches[[longest, 0]]
        return torch.cat([batches.reshape(-1), grouped[full * self.batch_size:]])

    def slices(self, permutation: torch.Tensor, start_step: int = 0):
        """Index tensors of each batch of one epoch, from `start_step` on."""
        for step in range(start_step, len(self)):
            yield permutation[step * self.batch_size:(step + 1) * self.batch_size]


def epoch_batches(split, slices, *, workers: int = 0):
    """(x, y) of each batch of one epoch: index slices of in-memory tensors, or the streaming path
    (DataLoader workers + decoded-image cache) when the split has lazily decoded image columns."""
    from dlforge.data.images.streaming import has_lazy, streaming_epoch

    if has_lazy(split):
        yield from streaming_epoch(split.x, split.y, slices, workers=workers)
        return
    for index in slices:
        yield gather(split.x, index), gather(split.y, index)


def eval_batches(n_rows: int, batch_size: int):
    for start in range(0, n_rows, batch_size):
        yield slice(start, min(start + batch_size, n_rows))


class ShardedBatches:
    """One process's share of `InMemoryBatches` under data parallelism (DDP, Ray Train): same global batches.

    Every process draws the same permutation from the same seeded generator (nothing is broadcast), and each
    global batch of `batch_size` rows is split into `world_size` contiguous parts (`torch.tensor_split`: sizes
    differ by at most one); process `rank` trains on part `rank`. So N processes see exactly the batches, in
    exactly the order, that one process sees, every row once per epoch across the processes, and the
    checkpointed state (permutation, step, generator) is the same whatever the process count: a run resumes
    on another number of processes.

    `rank_weight(step)` is what this process's mean loss is multiplied by so that the average of the gradients
    over the processes (what DDP's all-reduce computes) is the gradient of the global batch's mean loss:
    local_rows * world_size / global_rows. A global batch with fewer rows than processes (a short last batch)
    gives some process no rows: it trains on the batch's first row with weight 0 (a collective needs every
    process, and an empty batch would break some layers).
    """

    def __init__(self, batches: InMemoryBatches, *, rank: int, world_size: int):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside a world of {world_size}")
        self.base = batches
        self.rank, self.world_size = rank, world_size

    # The global view the trainer and checkpoints use, unchanged.
    n_rows = property(lambda self: self.base.n_rows)
    batch_size = property(lambda self: self.base.batch_size)
    generator = property(lambda self: self.base.generator)

    def __len__(self) -> int:
        return len(self.base)

    def permutation(self) -> torch.Tensor:
        return self.base.permutation()

    def global_rows(self, step: int) -> int:
        return min((step + 1) * self.batch_size, self.n_rows) - step * self.batch_size

    def local_rows(self, step: int) -> int:
        rows, rest = divmod(self.global_rows(step), self.world_size)
        return rows + (1 if self.rank < rest else 0)

    def rank_weight(self, step: int) -> float:
        return self.local_rows(step) * self.world_size / self.global_rows(step)

    def slices(self, permutation: torch.Tensor, start_step: int = 0):
        for index in self.base.slices(permutation, start_step):
            part = torch.tensor_split(index, self.world_size)[self.rank]
            yield part if len(part) else index[:1]
