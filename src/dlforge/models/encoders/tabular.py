"""`tabular`: every number/binary/category column of the recipe, encoded together.

Numbers and binaries pass through (already standardised by the data layer); each category gets its
own embedding. The combiner's dense layers then model interactions.
"""

from __future__ import annotations

import torch
from torch import nn

from dlforge.models.encoders.base import Encoder, encoders

TABULAR_TYPES = ("number", "binary", "category")


@encoders.register("tabular")
class TabularEncoder(Encoder):
    def __init__(self, config, signature: dict[str, dict], regularization):
        """`signature` maps each tabular column name to its signature."""
        super().__init__()
        self.numeric = [n for n, s in signature.items() if s["type"] in ("number", "binary")]
        self.categorical = [n for n, s in signature.items() if s["type"] == "category"]
        self.embeddings = nn.ModuleDict({
            n: nn.Embedding(signature[n]["cardinality"], signature[n]["embedding_dim"]) for n in self.categorical})
        self.output_dim = sum(signature[n]["width"] for n in self.numeric) + sum(
            signature[n]["embedding_dim"] for n in self.categorical)

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        parts = [inputs[n] for n in self.numeric]  # each (B, width)
        parts += [self.embeddings[n](inputs[n]) for n in self.categorical]  # each (B, dim)
        return torch.cat(parts, dim=1)
