"""Optimizers and learning-rate schedules by name. Schedules step per optimizer step (plateau per epoch).

With gradient accumulation an optimizer step is `training.accumulate` batches, so `steps_per_epoch` below
counts optimizer steps, and warm-up, cosine and onecycle lengths are those of the updates actually taken.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from dlforge.core.registry import Registry
from dlforge.recipe import higher_is_better
from dlforge.models.encoders.base import Backbone

optimizers: Registry[Callable] = Registry("optimizer")
schedules: Registry[Callable] = Registry("schedule")


def fast_kernel(params) -> dict:
    """The fastest update kernel torch offers for these parameters: fused (one kernel for all tensors) on CPU
    and CUDA, else foreach. For MiniLM's 22 M parameters on 2 CPU threads an AdamW step takes 33 ms fused vs
    137 ms foreach, a seventh of a fine-tuning step. Fused and foreach differ only in rounding."""
    tensors = [p for group in params for p in group["params"]]
    fusable = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in tensors)
    return {"fused": True} if fusable else {"foreach": True}


@optimizers.register("sgd")
def sgd(params, c):
    return torch.optim.SGD(params, lr=c.lr, momentum=c.momentum, nesterov=c.nesterov, weight_decay=c.weight_decay,
                           **fast_kernel(params))


@optimizers.register("adam")
def adam(params, c):
    return torch.optim.Adam(params, lr=c.lr, betas=c.betas, eps=c.eps, weight_decay=c.weight_decay,
                            **fast_kernel(params))


@optimizers.register("adamw")
def adamw(params, c):
    return torch.optim.AdamW(params, lr=c.lr, betas=c.betas, eps=c.eps, weight_decay=c.weight_decay,
                            **fast_kernel(params))


@optimizers.register("adagrad")
def adagrad(params, c):
    return torch.optim.Adagrad(params, lr=c.lr, lr_decay=c.lr_decay, weight_decay=c.weight_decay,
                               **fast_kernel(params))


@optimizers.register("rmsprop")
def rmsprop(params, c):
    return torch.optim.RMSprop(params, lr=c.lr, alpha=c.alpha, momentum=c.momentum, centered=c.centered,
                               weight_decay=c.weight_decay)


def parameter_groups(model: torch.nn.Module, lr: float) -> list[dict]:
    """One group per pretrained backbone at `lr * backbone_lr_mult` (discriminative learning rates), one for the rest.

    A backbone that unfreezes later is in its group from the start (its parameters simply have no
    gradient until then), so the optimizer and its checkpoint never change shape mid-run.
    """
    groups, seen = [], set()
    for module in model.modules():
        if isinstance(module, Backbone):
            params = module.backbone_parameters()
            seen.update(id(p) for p in module.backbone.parameters())
            if params:
                groups.append({"params": params, "lr": lr * module.lr_mult})
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in seen]
    return [{"params": rest, "lr": lr}, *groups] if rest else groups


def build_optimizer(model: torch.nn.Module, config) -> torch.optim.Optimizer:
    return optimizers.get(config.name)(parameter_groups(model, config.lr), config)


class Schedule:
    """Wraps a torch scheduler so the trainer calls `after_step()` each batch and `after_epoch(metrics)` each epoch."""

    def __init__(self, scheduler, *, per_step: bool, metric: str | None = None):
        self.scheduler = scheduler
        self.per_step = per_step
        self.metric = metric

    def after_step(self) -> None:
        if self.per_step:
            self.scheduler.step()

    def after_epoch(self, metrics: dict[str, float]) -> None:
        if self.metric is not None:
            self.scheduler.step(metrics[self.metric])

    def state_dict(self):
        return self.scheduler.state_dict()

    def load_state_dict(self, state):
        self.scheduler.load_state_dict(state)


def _lambda(optimizer, body: Callable[[int], float], warmup_steps: int) -> Schedule:
    def factor(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        return body(step - warmup_steps)

    return Schedule(torch.optim.lr_scheduler.LambdaLR(optimizer, factor), per_step=True)


@schedules.register("constant")
def constant(optimizer, c, steps_per_epoch: int, epochs: int) -> Schedule:
    warmup = int(c.warmup_epochs * steps_per_epoch)
    schedule = _lambda(optimizer, lambda step: 1.0, warmup)
    # Without warm-up the rate never changes: skip the per-step scheduler call (about 2% of a small MLP's step).
    schedule.per_step = warmup > 0
    return schedule


@schedules.register("step")
def step_decay(optimizer, c, steps_per_epoch: int, epochs: int) -> Schedule:
    return _lambda(optimizer, lambda step: c.gamma ** (step // (c.step_epochs * steps_per_epoch)),
                   int(c.warmup_epochs * steps_per_epoch))


@schedules.register("cosine")
def cosine(optimizer, c, steps_per_epoch: int, epochs: int) -> Schedule:
    warmup = int(c.warmup_epochs * steps_per_epoch)
    total = max(1, steps_per_epoch * epochs - warmup)

    def body(step: int) -> float:
        progress = min(step / total, 1.0)
        return c.min_lr_ratio + (1 - c.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return _lambda(optimizer, body, warmup)


@schedules.register("onecycle")
def onecycle(optimizer, c, steps_per_epoch: int, epochs: int) -> Schedule:
    peak = [group["lr"] for group in optimizer.param_groups]
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=peak, total_steps=max(2, steps_per_epoch * epochs), pct_start=c.pct_start,
        div_factor=c.div_factor, final_div_factor=c.final_div_factor)
    return Schedule(scheduler, per_step=True)


@schedules.register("plateau")
def plateau(optimizer, c, steps_per_epoch: int, epochs: int) -> Schedule:
    mode = "max" if higher_is_better(c.metric) else "min"
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode=mode, factor=c.factor, patience=c.patience,
                                                           min_lr=c.min_lr)
    return Schedule(scheduler, per_step=False, metric=c.metric)


def build_schedule(optimizer, config, steps_per_epoch: int, epochs: int) -> Schedule:
    return schedules.get(config.name)(optimizer, config, steps_per_epoch, epochs)
