"""Recommender scorers, registered as combiners (`combiner: {name: mf | two_tower | neumf}`).

Each turns user ids (+ user side features) into a user encoding U (B, D) with a bias, item ids (+ item side
features) into an item encoding V (N, D) with a bias, and scores pairs with `interact(U, V)` under broadcasting
((B, 1, D) with (B, m, D) for sampled items, with (1, N, D) for the whole catalogue). For mf and two_tower the
interaction is a dot product, so scoring every item is one (B, D) x (D, N) matrix product; NeuMF's is an MLP,
so scoring every item runs the MLP on B x N pairs (chunked by the caller).

`penalty` is the L2 of the embeddings a batch used (per-example regularisation, as in Funk SVD and BPR): a
dense weight decay would shrink every item's vector on every step, rare ones most.
"""

from __future__ import annotations

import torch
from torch import nn

from dlforge.models.combiners import combiners
from dlforge.models.layers import dense_stack


def _embedding(n: int, dim: int, std: float) -> nn.Embedding:
    emb = nn.Embedding(n, dim)
    nn.init.normal_(emb.weight, std=std)
    return emb


class HistoryEncoder(nn.Module):
    """A user's last N items (column 0 = the most recent, index 0 = none) as one vector: item embeddings (its own
    table, as FPMC's and FISM's history factors) plus a learned embedding per position. With `layers` = 0 they are
    pooled by one attention query whose logits also carry a learned recency prior per position (SASRec's
    positional self-attention reduced to the one query that scores the next item); with `layers` > 0 they go
    through that many pre-norm self-attention blocks (SASRec, Kang & McAuley 2018) and the most recent position's
    output is read (it attends to every earlier one; the next item is after all of them, so no causal mask is
    needed). Then a linear map. A user with no history gets zeros."""

    def __init__(self, n_items: int, dim: int, length: int, std: float, *, layers: int = 0, heads: int = 1,
                 dropout: float = 0.0):
        super().__init__()
        self.length = length
        self.items = _embedding(n_items, dim, std)
        self.positions = nn.Parameter(torch.zeros(length, dim))
        self.query = nn.Parameter(torch.zeros(dim))
        self.recency = nn.Parameter(-0.1 * torch.arange(length, dtype=torch.float32))
        self.dropout = nn.Dropout(dropout if layers else 0.0)  # the pooling query has none (its recipes' figures)
        self.blocks = nn.TransformerEncoder(
            nn.TransformerEncoderLayer(dim, heads, dim_feedforward=dim, dropout=dropout, batch_first=True,
                                       norm_first=True),
            layers, enable_nested_tensor=False) if layers else None
        self.norm = nn.LayerNorm(dim) if layers else None
        self.out = nn.Linear(dim, dim)

    def forward(self, history: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, N) item indices -> ((B, D) the encoded history, the (B, N*D) embeddings used, for the L2)."""
        emb = self.items(history)
        e = self.dropout(emb + self.positions)
        valid = history > 0
        some = valid.any(1, keepdim=True)
        if self.blocks is not None:
            # A row without history attends to its (empty) first slot rather than to nothing (NaN); zeroed below.
            padding = ~(valid | (~some & (torch.arange(self.length, device=history.device) == 0)))
            pooled = self.norm(self.blocks(e, src_key_padding_mask=padding)[:, 0])
        else:
            logits = (e @ self.query + self.recency).masked_fill(~valid, -1e9)
            weights = torch.softmax(logits, 1) * some
            pooled = (weights.unsqueeze(-1) * e).sum(1)
        return self.out(pooled) * some, emb.reshape(len(history), -1)


class Scorer(nn.Module):
    """The shared parts: per-id biases, side-feature encoders per tower, the L2 of what a batch used."""

    builds_model = True  # models/model.py: this combiner is a whole recommender, not a fusion of encoders
    dot_product = True  # scoring all items is one matrix product

    def __init__(self, config, *, n_users: int, n_items: int, side: dict[str, dict]):
        super().__init__()
        self.config = config
        self.l2 = getattr(config, "l2", 0.0)
        biases = getattr(config, "biases", False)
        self.user_bias = _embedding(n_users, 1, 1e-6) if biases else None
        self.item_bias = _embedding(n_items, 1, 1e-6) if biases else None
        self.global_bias = nn.Parameter(torch.zeros(())) if biases else None
        self._used: list[torch.Tensor] = []
        length = getattr(config, "history", 0)
        self.history = HistoryEncoder(
            n_items, config.dim, length, config.init_std, layers=getattr(config, "history_layers", 0),
            heads=getattr(config, "history_heads", 1), dropout=getattr(config, "history_dropout", 0.0),
        ) if length else None
        self.deviation_weights = (nn.Parameter(torch.full((length,), 0.1))
                                  if length and getattr(config, "history_ratings", False) else None)

    def recent_deviation(self, users: torch.Tensor, history: torch.Tensor, ratings: torch.Tensor) -> torch.Tensor:
        """(B,) how far the user's last ratings sat from what the biases expected, weighted per position (learned,
        from the most recent): users rate in sessions and moods, so the latest ratings' deviation carries over
        to the next one (the history's ratings, as SVD++'s implicit feedback but with the values and the order)."""
        valid = history > 0
        expected = self.biases(users, history) if self.user_bias is not None else torch.zeros_like(ratings)
        return ((ratings - expected) * valid * self.deviation_weights).sum(1)

    def add_history(self, u: torch.Tensor, history: torch.Tensor | None) -> torch.Tensor:
        """The user vector plus the encoding of the user's recent items (when the scorer has `history`)."""
        if self.history is None or history is None:
            return u
        pooled, used = self.history(history)
        self.use(used)
        return u + pooled

    def use(self, *tensors: torch.Tensor) -> None:
        if self.training and self.l2:
            self._used.extend(tensors)

    def penalty(self) -> torch.Tensor | None:
        """L2 of the embeddings used since the last call, averaged over the batch rows."""
        if not self._used:
            return None
        rows = self._used[0].shape[0]
        total = sum(t.pow(2).sum() for t in self._used) * (self.l2 / max(rows, 1))
        self._used = []
        return total

    def biases(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """b + b_u + b_i with users (B,) and items (B, m) -> (B, m); zeros without biases."""
        if self.user_bias is None:
            return torch.zeros(items.shape, device=items.device)
        bu, bi = self.user_bias(users), self.item_bias(items).squeeze(-1)
        self.use(bu, bi.reshape(len(users), -1))
        return self.global_bias + bu + bi

    def all_biases(self, users: torch.Tensor, n_items: int) -> torch.Tensor:
        """b + b_u + b_i for every item: (B, n_items) by broadcasting, each table row used once (for the L2)."""
        if self.user_bias is None:
            return torch.zeros(len(users), n_items, device=users.device)
        bu, bi = self.user_bias(users), self.item_bias.weight[:n_items].T
        self.use(bu, bi.T)
        return self.global_bias + bu + bi

    def interact(self, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return (u * v).sum(-1)


class IdFactors(Scorer):
    """A user table and an item table of `width`-wide factors (+ the history, when set): mf's and NeuMF's
    encodings."""

    def __init__(self, config, *, n_users, n_items, side, width: int):
        super().__init__(config, n_users=n_users, n_items=n_items, side=side)
        self.users = _embedding(n_users, width, config.init_std)
        self.items = _embedding(n_items, width, config.init_std)

    def encode_users(self, users, side, history=None):
        u = self.users(users)
        self.use(u)
        return self.add_history(u, history)

    def encode_items(self, items, side):
        v = self.items(items)
        self.use(v.reshape(-1, v.shape[-1]))
        return v


@combiners.register("mf")
class MatrixFactorization(IdFactors):
    def __init__(self, config, *, n_users, n_items, side):
        super().__init__(config, n_users=n_users, n_items=n_items, side=side, width=config.dim)


class SideEncoder(nn.Module):
    """One tower's side features as one vector: categories embedded, numbers and binaries as they are."""

    def __init__(self, side: dict[str, dict]):
        super().__init__()
        self.names = list(side)
        self.embeddings = nn.ModuleDict()
        self.output_dim = 0
        for i, sig in enumerate(side.values()):
            if sig["type"] == "category":
                self.embeddings[str(i)] = nn.Embedding(sig["cardinality"], sig["embedding_dim"])
                self.output_dim += sig["embedding_dim"]
            else:
                self.output_dim += sig.get("width", 1)

    def forward(self, side: dict[str, torch.Tensor], shape: torch.Size) -> list[torch.Tensor]:
        parts = []
        for i, name in enumerate(self.names):
            value = side[name]
            if str(i) in self.embeddings:
                parts.append(self.embeddings[str(i)](value.long()))
            else:
                parts.append(value.float().reshape(*shape, -1))
        return parts


@combiners.register("two_tower")
class TwoTower(Scorer):
    def __init__(self, config, *, n_users, n_items, side):
        super().__init__(config, n_users=n_users, n_items=n_items, side=side)
        self.users = _embedding(n_users, config.id_dim, config.init_std)
        self.items = _embedding(n_items, config.id_dim, config.init_std)
        self.user_side = SideEncoder({n: s for n, s in side.items() if s["tower"] == "user"})
        self.item_side = SideEncoder({n: s for n, s in side.items() if s["tower"] == "item"})
        self.user_tower = self._tower(config.id_dim + self.user_side.output_dim, config)
        self.item_tower = self._tower(config.id_dim + self.item_side.output_dim, config)

    @staticmethod
    def _tower(in_dim: int, config) -> nn.Module:
        hidden, width = dense_stack(in_dim, config.layers)
        return nn.Sequential(hidden, nn.Linear(width, config.dim))

    def _drop(self, ids: torch.Tensor) -> torch.Tensor:
        p = self.config.id_dropout
        if not self.training or not p:
            return ids
        return torch.where(torch.rand(ids.shape, device=ids.device) < p, torch.zeros_like(ids), ids)

    def encode_users(self, users, side, history=None):
        e = self.users(self._drop(users))
        self.use(e)
        return self.add_history(self.user_tower(torch.cat([e, *self.user_side(side, users.shape)], -1)), history)

    def encode_items(self, items, side):
        e = self.items(self._drop(items))
        self.use(e.reshape(-1, e.shape[-1]))
        return self.item_tower(torch.cat([e, *self.item_side(side, items.shape)], -1))


@combiners.register("neumf")
class NeuMF(IdFactors):
    """He et al. 2017: GMF (p_u * q_i) beside an MLP over [p'_u, q'_i], fused by one linear layer."""

    dot_product = False

    def __init__(self, config, *, n_users, n_items, side):
        super().__init__(config, n_users=n_users, n_items=n_items, side=side, width=config.dim + config.mlp_dim)
        self.dim = config.dim
        self.mlp, width = dense_stack(2 * config.mlp_dim, config.layers)
        self.fuse = nn.Linear(config.dim + width, 1)

    def interact(self, u, v):
        u, v = torch.broadcast_tensors(u, v)
        gmf = u[..., :self.dim] * v[..., :self.dim]
        mlp = self.mlp(torch.cat([u[..., self.dim:], v[..., self.dim:]], -1))
        return self.fuse(torch.cat([gmf, mlp], -1)).squeeze(-1)


__all__ = ["HistoryEncoder", "IdFactors", "MatrixFactorization", "NeuMF", "Scorer", "TwoTower"]
