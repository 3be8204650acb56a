"""Why training diverged: the likely cause of a first non-finite loss, named with the recipe field to change.

The trainer (training/trainer.py) finds the step; this reads the batch and the settings and says what to fix.
"""

from __future__ import annotations

import math

import torch


def likely_cause(train, rows: torch.Tensor, config, lr: float) -> tuple[str, str, str]:
    """(cause, recipe field, fix) of a first non-finite loss on the batch of training-split `rows`: non-finite data
    in the batch, then extreme settings of `config` (the recipe's training section), then the learning rate `lr`."""
    for group, tensors in (("input", train.x), ("target", train.y)):
        for name, t in tensors.items():
            if isinstance(t, torch.Tensor) and t.is_floating_point() and len(rows):
                bad = ~torch.isfinite(t[rows.to(t.device)].reshape(len(rows), -1)).all(1)
                if bool(bad.any()):
                    which = ", ".join(str(int(r)) for r in rows[bad.cpu()][:5])
                    return (f"{group} '{name}' holds NaN/inf in training-split row(s) {which}", name,
                            f"clean or drop those rows of '{name}'")
    optimizer, reg = config.optimizer, config.regularization
    if not math.isfinite(lr):
        return f"the learning rate is {lr}", "training.optimizer.lr", "set a finite training.optimizer.lr"
    for field_name in ("l1", "l2"):
        value = getattr(reg, field_name, 0.0) or 0.0
        if not math.isfinite(value) or value > 1e6:  # a penalty weight this large overflows the loss
            return (f"training.regularization.{field_name} is {value}: the penalty overflows",
                    f"training.regularization.{field_name}", f"use a small training.regularization.{field_name} "
                    "(1e-5 to 1e-2 is usual)")
    decay = getattr(optimizer, "weight_decay", 0.0) or 0.0
    if not math.isfinite(decay) or decay > 1e6:
        return (f"training.optimizer.weight_decay is {decay}", "training.optimizer.weight_decay",
                "use a small training.optimizer.weight_decay")
    low = "; or train in fp32" if config.precision != "fp32" else ""
    return (f"the weights diverged: the learning rate ({lr:.3g}) is likely too high for this model",
            "training.optimizer.lr", f"lower training.optimizer.lr, or set training.grad_clip (e.g. 1.0){low}")


__all__ = ["likely_cause"]
