"""Output heads and their losses: category (softmax cross-entropy), binary (sigmoid), number (MSE/MAE/Huber)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dlforge.core.registry import Registry

heads: Registry[type["Head"]] = Registry("output head")


class Head(nn.Module):
    def __init__(self, config, signature: dict, in_dim: int):
        super().__init__()
        self.config = config
        self.linear = nn.Linear(in_dim, signature["size"])
        self.register_buffer("class_weight", None, persistent=False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(features)

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return logits

    def combine(self, members: torch.Tensor) -> torch.Tensor:
        """An ensemble's logits (B, K, size) as one prediction's logits (B, size): the mean (numbers)."""
        return members.mean(1)


@heads.register("category")
class CategoryHead(Head):
    def loss(self, logits, target):
        return F.cross_entropy(logits.float(), target, weight=self.class_weight,
                               label_smoothing=self.config.label_smoothing)

    def probabilities(self, logits):
        return torch.softmax(logits.float(), dim=-1)

    def combine(self, members):
        """The log of the members' mean probabilities (TabM averages probabilities, not logits)."""
        return torch.log(torch.softmax(members.float(), dim=-1).mean(1).clamp(min=1e-12))


@heads.register("binary")
class BinaryHead(Head):
    def loss(self, logits, target):
        return F.binary_cross_entropy_with_logits(logits.float().squeeze(-1), target, pos_weight=self.class_weight)

    def probabilities(self, logits):
        positive = torch.sigmoid(logits.float())
        return torch.cat([1 - positive, positive], dim=-1)

    def combine(self, members):
        """The logit of the members' mean positive probability."""
        p = torch.sigmoid(members.float()).mean(1).clamp(1e-7, 1 - 1e-7)
        return torch.log(p) - torch.log1p(-p)


@heads.register("number")
class NumberHead(Head):
    LOSSES = {"mse": F.mse_loss, "mae": F.l1_loss, "huber": F.huber_loss}

    def loss(self, logits, target):
        return self.LOSSES[self.config.loss](logits.float().squeeze(-1), target)


@heads.register("multilabel")
class MultiLabelHead(Head):
    """One sigmoid per label; binary cross-entropy averaged over labels and rows."""

    def loss(self, logits, target):
        return F.binary_cross_entropy_with_logits(logits.float(), target)

    def probabilities(self, logits):
        return torch.sigmoid(logits.float())

    def combine(self, members):
        p = torch.sigmoid(members.float()).mean(1).clamp(1e-7, 1 - 1e-7)
        return torch.log(p) - torch.log1p(-p)
