"""Data-parallel training across processes: who this process is, and the DDP strategy.

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


def mean_over_processes(value: float) -> float:
    """The mean of a float over all processes (one all-reduce); the value itself when alone."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return value
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t) / dist.get_world_size()


@strategies.register("ddp")
class DistributedDataParallel(SingleDevice):
    """`torch.nn.parallel.DistributedDataParallel` over the initialised process group, with sharded batches.

    The trainer keeps the bare module (loss, state_dict, evaluation: checkpoints load on any process count and
    evaluation needs no collective) and runs training's forward through the wrapper, whose backward averages
    the gradients over the processes. Only rank 0 (`is_main`) writes checkpoints.
    """

    def __init__(self, process: Process | None = None, *, channels_last: bool = False):
        self.process = process or init()
        super().__init__(process_device(self.process), channels_last=channels_last)
        self.is_main = self.process.is_main

    def setup(self, model, optimizer, batches):
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [self.device.index] if self.device.type == "cuda" else None
        wrapped = DDP(model, device_ids=ids)  # broadcasts rank 0's weights: every process starts identical
        return wrapped, optimizer, ShardedBatches(batches, rank=self.process.rank, world_size=self.process.world_size)

    def mean_over_processes(self, value: float) -> float:
        return mean_over_processes(value)

    @classmethod
    def from_config(cls, config) -> "DistributedDataParallel":
        return cls(channels_last=config.channels_last)


@strategies.register("fsdp")
class FullyShardedRefused:
    """FSDP2 (`torch.distributed.fsdp.fully_shard`) is refused before anything is launched; see `check_strategy`."""

    @classmethod
    def from_config(cls, config):
        raise fsdp_refusal(torch.device("cpu"))


def fsdp_refusal(device: torch.device) -> DlforgeError:
    if device.type == "cpu":
        reason = ("on the CPU FSDP2 runs its all-gathers and reduce-scatters of DTensor shards over gloo, which is "
                  "reported to segfault (pytorch#132471), and dlforge's sharded path is not built")
    else:
        reason = ("dlforge's sharded path is not built yet (sharded weights need a collective checkpoint and an "
                  "unsharded model for rank 0's evaluation)")
    return DlforgeError(f"training.strategy: fsdp is not available: {reason}", where="training.strategy",
                        hint="use training.strategy: ddp (every process holds the whole model and the gradients are "
                             "averaged): it needs no sharding for models that fit one process's memory")


def check_strategy(config, device: torch.device) -> None:
    """Refuse, before any process starts, a multi-process strategy this machine cannot run."""
    if config.strategy == "fsdp":
        raise fsdp_refusal(device)
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


__all__ = ["DistributedDataParallel", "Process", "backend_for", "check_recipe", "check_strategy", "current", "init",
           "mean_over_processes", "process_device", "shutdown"]
