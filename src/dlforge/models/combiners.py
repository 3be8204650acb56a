"""Combiners fuse the encoded inputs (one vector per input) into one vector for the heads.

`concat` concatenates them and applies optional dense layers. `attention` projects each input's
vector to a token, adds a learned per-input embedding, and lets the tokens attend to each other
(a small transformer over inputs, as in multimodal fusion models), then flattens the attended tokens
and applies the same optional dense layers. Its attention maps (B, heads, inputs, inputs) say which
input each input drew on, for explanations.
"""

from __future__ import annotations

import torch
from torch import nn

from dlforge.models.encoders.sequence_layers import EncoderLayer
from dlforge.models.layers import dense_stack
from dlforge.core.registry import Registry

combiners: Registry[type[nn.Module]] = Registry("combiner")


@combiners.register("concat")
class ConcatCombiner(nn.Module):
    """With `ensemble` K > 1 (TabM-mini), or an encoder of K members (B, K, d), the output is (B, K, output_dim): one
    feature vector per member."""

    def __init__(self, config, in_dims: list[int], regularization):
        super().__init__()
        self.dense, self.output_dim = dense_stack(sum(in_dims), config.layers, activation=config.activation,
                                                  batch_norm=config.batch_norm, dropout=regularization.dropout,
                                                  dropconnect=regularization.dropconnect)
        members = getattr(config, "ensemble", 1)
        # TabM-mini's only per-member weights: a multiplicative adapter on the input, initialised to random signs.
        self.adapter = (nn.Parameter(torch.randint(0, 2, (members, sum(in_dims))).float() * 2 - 1)
                        if members > 1 else None)

    def forward(self, parts: list[torch.Tensor]) -> torch.Tensor:  # each (B[, K], d_i) -> (B[, K], output_dim)
        # An encoder of K members (text:ngram) gives (B, K, d). The branch is on ranks only, never on a size, so a
        # tracer (the torch runtime's lean graph, torch.compile) follows it without a graph break; K members of
        # different counts cannot be concatenated either way.
        ensembles = [p for p in parts if p.ndim == 3]
        if ensembles:  # every other input's vector is shared by the K members
            members = ensembles[0].shape[1]
            parts = [p if p.ndim == 3 else p.unsqueeze(1).expand(-1, members, -1) for p in parts]
        x = parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)
        if self.adapter is not None:
            x = (x if ensembles else x.unsqueeze(1)) * self.adapter  # (B, K, d): Linear layers act on the last dim
        return self.dense(x)


@combiners.register("attention")
class AttentionCombiner(nn.Module):
    def __init__(self, config, in_dims: list[int], regularization):
        super().__init__()
        self.project = nn.ModuleList(nn.Linear(d, config.dim) for d in in_dims)
        self.input_embedding = nn.Parameter(torch.zeros(len(in_dims), config.dim))
        nn.init.normal_(self.input_embedding, std=0.02)
        self.layers = nn.ModuleList(EncoderLayer(config.dim, config.heads, config.ff_dim, config.dropout)
                                    for _ in range(config.attention_layers))
        self.norm = nn.LayerNorm(config.dim)
        self.dense, self.output_dim = dense_stack(config.dim * len(in_dims), config.layers, activation=config.activation,
                                                  batch_norm=config.batch_norm, dropout=regularization.dropout,
                                                  dropconnect=regularization.dropconnect)

    def forward(self, parts: list[torch.Tensor]) -> torch.Tensor:  # each (B, d_i) -> (B, output_dim)
        tokens = torch.stack([proj(p) for proj, p in zip(self.project, parts)], dim=1) + self.input_embedding  # (B, n, dim)
        no_padding = torch.zeros(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        for layer in self.layers:
            tokens = layer(tokens, no_padding)
        return self.dense(self.norm(tokens).flatten(1))

    def keep_attention(self, keep: bool = True) -> None:
        for layer in self.layers:
            layer.keep_attention = keep

    def attention_maps(self) -> list[torch.Tensor]:
        return [layer.last_attention for layer in self.layers if layer.last_attention is not None]
