"""Data-parallel training across processes: who this process is, the DDP strategy, sharded evaluation, an agreed
stop, and how model and optimizer state are read and written (`StateIO`; FSDP's sharded form is in fsdp.py).

It lives in the training layer because the trainer and its strategies are the lowest code that needs it (the
strategy wraps the model and shards the batches, the trainer writes checkpoints on rank 0 only); the data layer
gets plain ints (`ShardedBatches(rank=, world_size=)`), and the launchers (torchrun, Ray Train) sit above it in
workflows/launch.py. Whoever started the processes, the same code path serves them:
  - `torchrun` / `dlforge train --nproc N` sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT: `init()` creates
    the process group from them;
  - Ray Train's `TorchTrainer` has already initialised the process group when our function runs: `init()` finds
    it and uses it.
One process (no group, no WORLD_SIZE > 1) is the single-device path, untouched.

Backends: gloo on the CPU, NCCL on CUDA (each process on GPU LOCAL_RANK). What is exact: every process draws
the same permutation and trains on its part of each global batch (data/batches.py ShardedBatches), so 1 and N
processes see the same samples in the same order, and their gradients are averaged with weights that make the
update that of the global batch (BatchNorm statistics are per process, as in every DDP setup without SyncBN).
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass

import torch

from dlforge.core.errors import DlforgeError
from dlforge.data.batches import ShardedBatches
from dlforge.training.strategy import SingleDevice, strategies


@dataclass(frozen=True)
class Process:
    """This process's place in a data-parallel job (rank 0 of 1 when alone)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


def current() -> Process:
    """Who this process is: from an initialised process group (Ray Train, a caller's own), else torchrun's
    environment, else rank 0 of 1. Reads only; `init()` creates the group."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return Process(dist.get_rank(), dist.get_world_size(), _env_int("LOCAL_RANK", 0))
    world = _env_int("WORLD_SIZE", 1)
    if world > 1 and "RANK" in os.environ:
        return Process(_env_int("RANK", 0), world, _env_int("LOCAL_RANK", 0))
    return Process()


def backend_for(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def process_device(process: Process) -> torch.device:
    """CUDA device LOCAL_RANK when GPUs exist (one process per GPU), else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", process.local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def init() -> Process:
    """Join the process group this process belongs to (created from torchrun's environment if nobody did yet)."""
    import torch.distributed as dist

    process = current()
    if not process.distributed or dist.is_initialized():
        return process
    device = process_device(process)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend_for(device))
    return current()


def shutdown() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
        # What still holds the process groups (an FSDP device mesh, a finished trainer's pending work) is freed now,
        # while the interpreter is whole: freed at its finalization, gloo's worker threads can abort the process
        # (SIGABRT, "terminate called without an active exception") after a run that succeeded.
        gc.collect()


def mean_over_processes(value: float) -> float:
    """The mean of a float over all processes (one all-reduce); the value itself when alone."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return value
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t) / dist.get_world_size()


class StateIO:
    """How the trainer reads and writes the model's and optimizer's state: the module's own state_dicts (one
    process, DDP: every process holds the whole model). FSDP's sharded state goes through `ShardedStateIO`.
    Every checkpoint holds this plain, unsharded form, so any strategy and process count resumes any other's."""

    sharded = False

    def model_state(self, model) -> dict:
        return model.state_dict()

    def load_model_state(self, model, state: dict) -> None:
        model.load_state_dict(state)

    def optimizer_state(self, model, optimizer) -> dict:
        return optimizer.state_dict()

    def load_optimizer_state(self, model, optimizer, state: dict) -> None:
        optimizer.load_state_dict(state)

    def grads(self, model) -> dict:
        return {name: p.grad.detach().cpu() for name, p in model.named_parameters() if p.grad is not None}

    def load_grads(self, model, grads: dict) -> None:
        for name, p in model.named_parameters():
            if name in grads:
                p.grad = grads[name].to(p.device)

    def local(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor


PLAIN_STATE = StateIO()


class AgreedStop:
    """A stop request all processes act on at the same step (a signal reaches each rank at its own moment).

    At a check, each process puts its stop flag into an asynchronous all-reduce (MAX, on a CPU gloo group: no device
    sync) and reads it at the next check, so every process stops after the same step. Checks are about
    CHECK_SECONDS apart, in steps agreed through the same all-reduce (each process proposes how many of its steps
    make that interval, the smallest wins): a 1-element gloo all-reduce costs ~0.35 ms of CPU (measured here), a
    large share of a small model's step, and a stop then lands within about two intervals plus a step. Rank 0
    writes the checkpoint of that step; under FSDP the others take part in gathering it."""

    CHECK_SECONDS = 0.05
    MAX_INTERVAL = 64

    def __init__(self, local, group=None):
        self.local = local
        self.group = group
        self._values = None
        self._pending = None
        self._agreed = False
        self._step = 0
        self._next = 1  # the step of the next check, agreed
        self._interval = 1
        self._last = None  # (step, time) of the previous check

    def _read(self) -> None:
        if self._pending is not None:
            self._pending.wait()
            self._pending = None
            self._agreed = self._agreed or float(self._values[0]) > 0
            self._interval = int(-self._values[1])

    def __call__(self) -> bool:
        """Called once per training step by every process."""
        import time

        import torch.distributed as dist

        self._step += 1
        if self._agreed:
            return True
        if self._step < self._next:
            return False
        self._read()
        if self._agreed:
            return True
        now = time.perf_counter()
        want = 1
        if self._last is not None:  # this process's steps per CHECK_SECONDS, from the steps since the last check
            per_step = (now - self._last[1]) / max(self._step - self._last[0], 1)
            want = max(1, min(self.MAX_INTERVAL, int(self.CHECK_SECONDS / max(per_step, 1e-6))))
        self._last = (self._step, now)
        self._values = torch.tensor([1.0 if self.local.is_set() else 0.0, -float(want)])
        self._pending = dist.all_reduce(self._values, op=dist.ReduceOp.MAX, group=self.group, async_op=True)
        self._next = self._step + self._interval
        return False

    def finish(self) -> None:
        """Waits for the check in flight (a run ends with no collective pending in gloo's worker threads)."""
        self._read()

    def now(self) -> bool:
        """A blocking agreement (outside the step loop, every process at the same point)."""
        import torch.distributed as dist

        self._read()
        flag = torch.tensor([1.0 if self.local.is_set() or self._agreed else 0.0])
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.group)
        self._agreed = float(flag[0]) > 0
        return self._agreed


@strategies.register("ddp")
class DistributedDataParallel(SingleDevice):
    """`torch.nn.parallel.DistributedDataParallel` over the initialised process group, with sharded batches.

    The trainer keeps the bare module (loss, state_dict: checkpoints load on any process count) and runs
    training's forward through the wrapper, whose backward averages the gradients over the processes. Only rank
    0 (`is_main`) writes checkpoints. Evaluation is sharded too: each process scores its contiguous share of the
    rows and the logits are gathered (`shard_rows`, `gather_rows`), so every process computes the metrics of the
    whole split, as one process would.
    """

    state_io = PLAIN_STATE

    def __init__(self, process: Process | None = None, *, channels_last: bool = False):
        self.process = process or init()
        super().__init__(process_device(self.process), channels_last=channels_last)
        self.is_main = self.process.is_main
        self._stop_group = None

    def setup(self, model, optimizer, batches):
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [self.device.index] if self.device.type == "cuda" else None
        wrapped = DDP(model, device_ids=ids)  # broadcasts rank 0's weights: every process starts identical
        return wrapped, optimizer, self._shard(batches)

    def _shard(self, batches):
        return ShardedBatches(batches, rank=self.process.rank, world_size=self.process.world_size)

    def mean_over_processes(self, value: float) -> float:
        return mean_over_processes(value)

    def agreed_stop(self, stop) -> AgreedStop:
        """The trainer's per-step stop check (see AgreedStop); a CPU gloo group carries it under NCCL."""
        import torch.distributed as dist

        if self._stop_group is None:
            self._stop_group = dist.new_group(backend="gloo") if dist.get_backend() != "gloo" else dist.group.WORLD
        return AgreedStop(stop, self._stop_group)

    # ---------------------------------------------------------------- sharded evaluation
    def shard_rows(self, n: int) -> torch.Tensor:
        """This process's rows of an n-row split for evaluation: a contiguous share of ceil(n / world) rows, padded
        with its first row (or row 0) to that length, so every process runs the same number of forward passes
        (FSDP's forward is a collective) and the gathered logits have equal shapes."""
        per = -(-n // self.process.world_size)
        start = min(self.process.rank * per, n)
        rows = torch.arange(start, min(start + per, n))
        pad = torch.full((per - len(rows),), int(rows[0]) if len(rows) else 0, dtype=torch.long)
        return torch.cat([rows, pad])

    def sync_buffers(self, model) -> None:
        """Rank 0's buffers (BatchNorm's running statistics: each process updated its own on its own rows) on every
        process before a sharded evaluation, so each share is scored by the model rank 0 saves."""
        import torch.distributed as dist

        for buffer in model.buffers():
            data = buffer.data.contiguous()
            dist.broadcast(data, src=0)
            if data.data_ptr() != buffer.data.data_ptr():
                buffer.data.copy_(data)

    def gather_rows(self, tensor: torch.Tensor, n: int) -> torch.Tensor:
        """The n-row whole of every process's `shard_rows` part of `tensor` (all-gather; the padding dropped)."""
        import torch.distributed as dist

        parts = [torch.empty_like(tensor) for _ in range(self.process.world_size)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts)[:n]  # only the last shares are padded: the real rows come first, in order

    def release(self, model):
        """After the last collective: the module rank 0 evaluates alone and saves (the bare module itself)."""
        return model

    @classmethod
    def from_config(cls, config) -> "DistributedDataParallel":
        return cls(channels_last=config.channels_last)


def check_strategy(config, device: torch.device) -> None:
    """Refuse, before any process starts, a multi-process strategy this machine cannot run."""
    if config.strategy == "fsdp":
        from dlforge.training.fsdp import check_fsdp

        check_fsdp(config, device)
    if config.privacy is not None:
        raise DlforgeError("DP-SGD (training.privacy) trains in one process; several processes would each clip and "
                           "noise their own part, which the privacy accountant does not cover", where="training.privacy",
                           hint="train without --nproc/--ray-address, or drop training.privacy")
    if config.cross_fit > 1:
        raise DlforgeError("training.cross_fit trains its members one after another in one process",
                           where="training.cross_fit", hint="train without --nproc/--ray-address, or set cross_fit: 1")
    if config.optimizer.lr == "auto":
        raise DlforgeError("training.optimizer.lr: auto runs the range test in one process before training",
                           where="training.optimizer.lr",
                           hint="run `dlforge lr-find RECIPE` once and set its suggestion as training.optimizer.lr")


def check_recipe(recipe, device: torch.device) -> None:
    """`check_strategy`, and what only the whole recipe shows: gradual unfreezing, which DDP cannot follow (it
    averages the gradients of the parameters that trained when it wrapped the model; a layer unfrozen later would
    train on each process's rows alone, and the processes' weights would drift apart silently)."""
    check_strategy(recipe.training, device)
    for i, feature in enumerate(recipe.inputs):
        if getattr(getattr(feature, "encoder", None), "unfreeze_at_epoch", None) is not None:
            raise DlforgeError("gradual unfreezing is not supported on several processes: DDP averages only the "
                               "gradients of parameters that trained from the first step",
                               where=f"inputs.{i}.encoder.unfreeze_at_epoch",
                               hint="unfreeze from the start (freeze: none or until:<block>) or train in one process")


__all__ = ["AgreedStop", "DistributedDataParallel", "PLAIN_STATE", "StateIO", "Process", "backend_for", "check_recipe", "check_strategy", "current", "init",
           "mean_over_processes", "process_device", "shutdown"]
