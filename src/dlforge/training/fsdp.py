"""FSDP2 (`training.strategy: fsdp`): each process holds 1/N of the weights, gradients and optimizer state.

`torch.distributed.fsdp.fully_shard` on every input encoder and every block of a layer stack, the whole model last
(`shard_units`); batches and evaluation are sharded exactly as under DDP (training/distributed.py), so 1 and N
processes follow the same trajectory. What this file adds to DDP is the state: checkpoints and early stopping's
best weights are the full, unsharded state gathered to rank 0 (`ShardedStateIO`), in the very form one process or
DDP writes, so a run resumes on any strategy and process count; and after training rank 0 gets an ordinary module
with the full weights (`FullyShardedDataParallel.release`). What it does not do is refused before launching, with
the reason (`check_fsdp`). On the CPU it runs over gloo, where pytorch#132471 reports segfaults; none happened here
with torch 2.13 (tests/test_distributed.py, benchmarks/fsdp.py).
"""

from __future__ import annotations

import torch

from dlforge.core.errors import DlforgeError
from dlforge.training.distributed import DistributedDataParallel, Process, StateIO
from dlforge.training.strategy import strategies


def _local(tensor):
    from torch.distributed.tensor import DTensor

    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def _shard_like(full: torch.Tensor, like) -> torch.Tensor:
    """`full` (the same on every process) as a DTensor placed like `like`, each process cutting its own shard: no
    communication (`src_data_rank=None`)."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if not isinstance(like, DTensor):
        return full.to(like.device)
    return distribute_tensor(full.to(like.device, like.dtype), like.device_mesh, like.placements, src_data_rank=None)


class ShardedStateIO(StateIO):
    """FSDP2's state in the plain, unsharded form every dlforge checkpoint holds.

    Writing gathers the full state to rank 0 (torch.distributed.checkpoint.state_dict with full_state_dict=True,
    cpu_offload=True: the other processes get {} and keep only their shards); the optimizer's state, which that
    API keys by parameter name, is re-keyed by position as `optimizer.state_dict()` is. Reading does not use
    set_model_state_dict(broadcast_from_rank0=True), which fails on CPU tensors (torch 2.13: "c10d.broadcast_ has no
    sharding strategy"); rank 0's full tensors are broadcast one at a time and each process cuts its shard."""

    sharded = True

    def __init__(self, process: Process):
        self.process = process

    @staticmethod
    def _options(**kw):
        from torch.distributed.checkpoint.state_dict import StateDictOptions

        return StateDictOptions(full_state_dict=True, cpu_offload=True, **kw)

    def model_state(self, model) -> dict:
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        return get_model_state_dict(model, options=self._options())

    def load_model_state(self, model, state: dict) -> None:
        """`state` is read on rank 0 (the others may pass {}): broadcast tensor by tensor, then sharded."""
        import torch.distributed as dist

        current = model.state_dict()
        if self.process.is_main:
            missing = sorted(set(current) - set(state))[:5]
            unexpected = sorted(set(state) - set(current))[:5]
            if missing or unexpected:
                raise RuntimeError(f"missing keys {missing}, unexpected keys {unexpected}")
        sharded = {}
        for key, like in current.items():
            full = state[key].to(like.device, like.dtype) if self.process.is_main else torch.empty(
                like.shape, dtype=like.dtype, device=_local(like).device)
            dist.broadcast(full, src=0)
            sharded[key] = _shard_like(full, like)
        model.load_state_dict(sharded)

    def optimizer_state(self, model, optimizer) -> dict:
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        full = get_optimizer_state_dict(model, optimizer, options=self._options())
        if not full:  # not rank 0
            return {}
        index, groups = {}, []
        for group in full["param_groups"]:
            ids = []
            for name in group["params"]:
                index[name] = len(index)
                ids.append(index[name])
            groups.append({**group, "params": ids})
        return {"state": {index[name]: value for name, value in full["state"].items()}, "param_groups": groups}

    def load_optimizer_state(self, model, optimizer, state: dict) -> None:
        """`state` (the plain form, read by every process from the checkpoint) with each tensor that has its
        parameter's shape cut to that parameter's shard (the scalar `step` stays whole)."""
        params = [p for group in optimizer.param_groups for p in group["params"]]
        sharded = {}
        for i, values in state["state"].items():
            p = params[int(i)]
            sharded[i] = {k: _shard_like(v, p) if torch.is_tensor(v) and v.shape == p.shape and v.ndim else v
                          for k, v in values.items()}
        optimizer.load_state_dict({"state": sharded, "param_groups": state["param_groups"]})

    def grads(self, model) -> dict:
        from torch.distributed.tensor import DTensor

        return {name: (p.grad.full_tensor() if isinstance(p.grad, DTensor) else p.grad).detach().cpu()
                for name, p in model.named_parameters() if p.grad is not None}

    def load_grads(self, model, grads: dict) -> None:
        for name, p in model.named_parameters():
            if name in grads:
                p.grad = _shard_like(grads[name], p)

    def local(self, tensor: torch.Tensor) -> torch.Tensor:
        return _local(tensor)


def shard_units(model: torch.nn.Module) -> list[str]:
    """The submodules FSDP shards as units of their own, deepest first (the root is sharded last, over the rest):
    every block of a layer stack (each entry of an nn.ModuleList with parameters: transformer layers, a
    combiner's projections, an ensemble's members) and every input encoder. One unit's parameters are gathered
    for its forward and freed after it, so only one block's full weights are held at a time."""
    names = set()
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList):
            names.update(f"{name}.{child}" if name else child for child, sub in module.named_children()
                         if any(True for _ in sub.parameters()))
    encoders = getattr(model, "encoders", None)
    if isinstance(encoders, torch.nn.ModuleDict):
        prefix = next((n for n, m in model.named_modules() if m is encoders), "encoders")
        names.update(f"{prefix}.{key}" for key, sub in encoders.items() if any(True for _ in sub.parameters()))
    return sorted(names, key=lambda n: (-n.count("."), n))


@strategies.register("fsdp")
class FullyShardedDataParallel(DistributedDataParallel):
    """FSDP2 (`torch.distributed.fsdp.fully_shard`): each process holds 1/N of every parameter, its gradient and
    its optimizer state; a unit's (`shard_units`) parameters are all-gathered for its forward and backward and
    its gradients reduce-scattered. Batches are sharded as under DDP (the same global batches: 1 and N processes
    follow the same trajectory), gradient clipping works on the sharded gradients (DTensor), and on a GPU a
    recipe's bf16 becomes FSDP's mixed-precision policy (bf16 compute, fp32 reduction and master weights).

    The model is sharded where the strategy places it, before the optimizer exists, so the optimizer holds the
    sharded parameters. Checkpoints and early stopping's best weights are the full, unsharded state
    (`ShardedStateIO`); after training, `release` gives rank 0 an ordinary module with the full weights (a
    parameter-free copy was kept on the meta device) for the test evaluation, the report and the saved model.
    """

    def __init__(self, process: Process | None = None, *, channels_last: bool = False, precision: str = "fp32"):
        super().__init__(process, channels_last=channels_last)
        self.precision = precision
        self.state_io = ShardedStateIO(self.process)
        self._template = None
        self._kept_buffers = {}
        self.units: list[str] = []

    def place_model(self, model):
        import copy

        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        model = super().place_model(model)
        if self.process.is_main:  # what `release` fills with the trained weights: the structure, no storage
            persistent = set(model.state_dict())
            self._kept_buffers = {k: b.detach().clone() for k, b in model.named_buffers() if k not in persistent}
            self._template = copy.deepcopy(model).to("meta")
        mesh = init_device_mesh(self.device.type, (self.process.world_size,))
        policy = MixedPrecisionPolicy()
        if self.device.type == "cuda" and self.precision == "bf16":
            policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        self.units = shard_units(model)
        for name in self.units:
            fully_shard(model.get_submodule(name), mesh=mesh, mp_policy=policy)
        fully_shard(model, mesh=mesh, mp_policy=policy)
        return model

    def setup(self, model, optimizer, batches):
        return model, optimizer, self._shard(batches)

    def release(self, model):
        """Gather the full weights (every process takes part); rank 0 gets an ordinary module holding them."""
        state = self.state_io.model_state(model)
        if not self.process.is_main:
            return model
        plain = self._template.to_empty(device=self.device)
        plain.load_state_dict(state)
        for name, buffer in self._kept_buffers.items():
            owner, _, leaf = name.rpartition(".")
            plain.get_submodule(owner).register_buffer(leaf, buffer.to(self.device), persistent=False)
        self._template = None
        from dlforge.models.layers import RandomStateful

        if isinstance(model, RandomStateful) and model.rng_state() is not None:  # a negative sampler's generator
            plain.load_rng_state(model.rng_state())
        return plain

    @classmethod
    def from_config(cls, config) -> "FullyShardedDataParallel":
        return cls(channels_last=config.channels_last, precision=config.precision)


def check_fsdp(config, device: torch.device) -> None:
    """What dlforge's FSDP path does not do, refused with the reason (the rest of the recipe trains as under ddp)."""
    import torch.distributed as dist

    hint = "use training.strategy: ddp (every process holds the whole model) or drop the setting"
    if not dist.is_available():
        raise DlforgeError("training.strategy: fsdp needs torch.distributed, which this torch build lacks",
                           where="training.strategy", hint=hint)
    reg = config.regularization
    if reg.l1 or reg.l2:
        raise DlforgeError("training.regularization l1/l2 is not available with fsdp: the penalty is computed over "
                           "whole weights outside any forward pass, where FSDP holds only each process's shard",
                           where="training.regularization",
                           hint="use training.optimizer.weight_decay (applied to the shards by the optimizer), or " + hint)
    if config.precision == "fp16":
        raise DlforgeError("training.precision: fp16 is not available with fsdp: fp16 needs a loss scaler over the "
                           "sharded gradients, which dlforge does not build", where="training.precision",
                           hint="use bf16 (FSDP's mixed-precision policy on a GPU, autocast on a CPU: no scaler)")
    if config.compile:
        raise DlforgeError("training.compile is not available with fsdp in dlforge: compiling the sharded model's "
                           "hooks is not tested here", where="training.compile",
                           hint="set training.compile: false, or use training.strategy: ddp")


__all__ = ["FullyShardedDataParallel", "ShardedStateIO", "check_fsdp", "shard_units"]
