"""`tabular`: every number/binary/category column of the recipe, encoded together.

Numbers and binaries pass through (already scaled by the data layer) unless a number column asks for an
embedding (piecewise_linear or periodic, models/number_embeddings.py: the columns of each embedding kind
and width are embedded together in one batched op); each category gets its own embedding. The combiner's
dense layers then model interactions.
"""

from __future__ import annotations

import torch
from torch import nn

from dlforge.models.encoders.base import Encoder, encoders
from dlforge.models.number_embeddings import PeriodicEmbedding, PiecewiseLinearEmbedding

TABULAR_TYPES = ("number", "binary", "category")


def _group_key(emb: dict) -> str:
    if emb["name"] == "piecewise_linear":
        return f"piecewise_linear_{emb['dim']}"
    return f"periodic_{emb['dim']}_{emb['frequencies']}_{emb['sigma']}".replace(".", "_")  # no '.' in module names


@encoders.register("tabular")
class TabularEncoder(Encoder):
    def __init__(self, config, signature: dict[str, dict], regularization):
        """`signature` maps each tabular column name to its signature."""
        super().__init__()
        embedded = {n: s["embedding"] for n, s in signature.items() if s["type"] == "number" and s.get("embedding")}
        self.numeric = [n for n, s in signature.items() if s["type"] in ("number", "binary") and n not in embedded]
        # An embedded column with a missing indicator: the indicator (its second value) passes through.
        self.indicators = [n for n in embedded if signature[n]["width"] == 2]
        self.groups: dict[str, list[str]] = {}
        for name, emb in embedded.items():
            self.groups.setdefault(_group_key(emb), []).append(name)
        self.embedders = nn.ModuleDict()
        for key, names in self.groups.items():
            emb = embedded[names[0]]
            self.embedders[key] = (PiecewiseLinearEmbedding([embedded[n]["edges"] for n in names], emb["dim"])
                                   if emb["name"] == "piecewise_linear"
                                   else PeriodicEmbedding(len(names), emb["frequencies"], emb["sigma"], emb["dim"]))
        self.categorical = [n for n, s in signature.items() if s["type"] == "category"]
        self.embeddings = nn.ModuleDict({
            n: nn.Embedding(signature[n]["cardinality"], signature[n]["embedding_dim"]) for n in self.categorical})
        self.output_dim = (sum(signature[n]["width"] for n in self.numeric) + len(self.indicators)
                           + sum(e.output_dim for e in self.embedders.values())
                           + sum(signature[n]["embedding_dim"] for n in self.categorical))

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        parts = [inputs[n] for n in self.numeric]  # each (B, width)
        for key, names in self.groups.items():
            values = torch.stack([inputs[n][:, 0] for n in names], dim=1)  # (B, F)
            parts.append(self.embedders[key](values))
        parts += [inputs[n][:, 1:2] for n in self.indicators]
        parts += [self.embeddings[n](inputs[n]) for n in self.categorical]  # each (B, dim)
        return torch.cat(parts, dim=1)
