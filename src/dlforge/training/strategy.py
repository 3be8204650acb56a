"""The strategy seam: where the model, optimizer and batches live and how they are wrapped (Lightning Fabric's
`setup` idea, ours).

A strategy owns the device (the trainer never picks one), places the data splits and the model on it, and
wraps `setup(model, optimizer, batches) -> (model, optimizer, batches)` once, after the optimizer is built
and before the first step. That call is the single place the scale-out and privacy work plugs in, each as a
new strategy registered here, never as an `if` in the loop:
  - DDP / FSDP: wrap the model, shard the batches by rank (`InMemoryBatches` is an index permutation, so a
    rank takes every world_size-th batch);
  - Opacus DP-SGD: `make_private(module, optimizer, data_loader)` returns exactly these three, and Poisson
    sampling replaces the batches.
`SingleDevice` (the default) returns all three unchanged: plain training pays nothing for the seam.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

from dlforge.core.registry import Registry


@runtime_checkable
class Strategy(Protocol):
    """What the trainer needs from a strategy; `setup` gives back what it got, wrapped and in the same order."""

    device: torch.device

    def place_model(self, model: torch.nn.Module) -> torch.nn.Module: ...

    def place_split(self, split): ...

    def setup(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, batches) -> tuple: ...


@runtime_checkable
class StatefulStrategy(Strategy, Protocol):
    """A strategy with state of its own (DP-SGD's privacy accountant): checkpointed beside the trainer's, and
    callbacks it adds to the trainer's (before the others, so what they log is in the epoch's metrics)."""

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...

    def callbacks(self) -> list: ...

    def report(self) -> dict: ...


strategies: Registry[type] = Registry("strategy")


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@strategies.register("single_device")
class SingleDevice:
    """One process, one device: cuda when available, else cpu (or the device given).

    `channels_last` (training.channels_last) stores 4-D image tensors and the model's convolution weights
    channels-last, which some CPU and GPU kernels run faster; the layout is a placement decision, so it is here.
    """

    def __init__(self, device: torch.device | str | None = None, *, channels_last: bool = False):
        self.device = torch.device(device) if device is not None else default_device()
        self.channels_last = channels_last

    def _move(self, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.to(self.device)
        if self.channels_last and tensor.ndim == 4:
            return tensor.contiguous(memory_format=torch.channels_last)
        return tensor

    def place_model(self, model: torch.nn.Module) -> torch.nn.Module:
        model = model.to(self.device)
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def place_split(self, split):
        """Every tensor of an encoded split on the device (lazily decoded image columns move themselves per batch)."""
        split.x = {k: self._move(v) for k, v in split.x.items()}
        split.y = {k: self._move(v) for k, v in split.y.items()}
        return split

    def setup(self, model, optimizer, batches):
        return model, optimizer, batches

    @classmethod
    def from_config(cls, config) -> "SingleDevice":
        return cls(channels_last=config.channels_last)


def _several_processes() -> bool:
    """True inside a data-parallel job (an initialised process group, or torchrun's WORLD_SIZE > 1)."""
    from dlforge.training.distributed import current

    return current().distributed


def build_strategy(strategy: Strategy | str | None, config) -> Strategy:
    """The recipe's strategy: an instance as given, a registered name (built by its `from_config(training
    config)`), or None: the recipe's training.strategy (ddp) inside a data-parallel job (training/distributed.py),
    `dp_sgd` when the recipe asks for privacy (training.privacy), else `SingleDevice`."""
    private = getattr(config, "privacy", None) is not None
    if strategy is None and _several_processes():  # torchrun's environment or Ray Train's process group
        from dlforge.training.distributed import check_strategy, current, process_device

        check_strategy(config, process_device(current()))
        strategy = config.strategy
        if strategy == "fsdp":
            import dlforge.training.fsdp  # noqa: F401  (registers fsdp)
    if private:
        import dlforge.training.privacy  # noqa: F401  (registers dp_sgd; Opacus itself is imported when used)
    if strategy is None or isinstance(strategy, str):
        return strategies.get(strategy or ("dp_sgd" if private else "single_device")).from_config(config)
    if private and not isinstance(strategy, StatefulStrategy):  # a caller's device strategy: keep it, add privacy
        from dlforge.training.privacy import PrivateSGD

        return PrivateSGD(config.privacy, epochs=config.epochs, base=strategy)
    return strategy


__all__ = ["SingleDevice", "StatefulStrategy", "Strategy", "build_strategy", "default_device", "strategies"]
