"""Building blocks shared by text and time-series encoders: masked pooling, packed RNNs, a transformer.

All take steps as (B, L, D) with a boolean `valid` mask (B, L) (True on real steps), so padding
never changes a result: pooling ignores it, RNNs never read it (packed sequences), attention never
attends to it.
"""

from __future__ import annotations

import math

import torch
from torch.utils.checkpoint import checkpoint
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence


def masked_mean(h: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:  # (B, L, D), (B, L) -> (B, D)
    weights = valid.unsqueeze(-1).to(h.dtype)
    return (h * weights).sum(1) / weights.sum(1).clamp(min=1)


def masked_max(h: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:  # (B, L, D), (B, L) -> (B, D)
    return h.masked_fill(~valid.unsqueeze(-1), torch.finfo(h.dtype).min).amax(1)


class RNNBackbone(nn.Module):
    """LSTM/GRU over packed sequences; pooling 'last' (final states of both directions), 'mean' or 'max'."""

    def __init__(self, config, in_dim: int):
        super().__init__()
        cell = nn.LSTM if config.name == "lstm" else nn.GRU
        self.rnn = cell(in_dim, config.hidden, num_layers=config.layers, batch_first=True,
                        bidirectional=config.bidirectional, dropout=config.dropout if config.layers > 1 else 0.0)
        self.pooling = config.pooling
        self.directions = 2 if config.bidirectional else 1
        self.output_dim = config.hidden * self.directions

    def forward(self, h: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:  # (B, L, D) -> (B, hidden*dirs)
        # Packing needs lengths on the CPU; for a CPU model this is no copy (on GPU it is one small sync per batch).
        lengths = valid.sum(1).clamp(min=1).cpu()
        packed = pack_padded_sequence(h, lengths, batch_first=True, enforce_sorted=False)
        out, state = self.rnn(packed)
        if self.pooling == "last":
            final = state[0] if isinstance(state, tuple) else state  # (layers*dirs, B, hidden)
            return torch.cat(list(final[-self.directions:]), dim=-1)
        steps, _ = pad_packed_sequence(out, batch_first=True, total_length=h.shape[1])
        return masked_mean(steps, valid) if self.pooling == "mean" else masked_max(steps, valid)


def sinusoidal_positions(length: int, dim: int) -> torch.Tensor:
    """(length, dim) positional encoding of Vaswani et al. 2017."""
    position = torch.arange(length).unsqueeze(1)
    freq = torch.exp(torch.arange(0, dim, 2) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(position * freq)
    table[:, 1::2] = torch.cos(position * freq[: dim // 2])
    return table


class EncoderLayer(nn.Module):
    """Pre-norm self-attention + feed-forward. Keeps its attention map when `keep_attention` is set."""

    def __init__(self, dim: int, heads: int, ff_dim: int, dropout: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attention = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, ff_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(ff_dim, dim))
        self.dropout = nn.Dropout(dropout)
        self.keep_attention = False
        self.last_attention: torch.Tensor | None = None  # (B, heads, L, L) when kept

    def forward(self, h: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        x = self.norm1(h)
        # Weights are only computed when asked for: need_weights=False lets torch use its fused kernel.
        out, weights = self.attention(x, x, x, key_padding_mask=padding, need_weights=self.keep_attention,
                                      average_attn_weights=False)
        self.last_attention = weights.detach() if self.keep_attention else None
        h = h + self.dropout(out)
        return h + self.dropout(self.ff(self.norm2(h)))


class TransformerBackbone(nn.Module):
    """Positional encoding, a stack of encoder layers, then [CLS] (position 0) or masked-mean pooling."""

    def __init__(self, config, max_length: int):
        super().__init__()
        if config.dim % config.heads:
            raise ValueError(f"dim {config.dim} is not divisible by heads {config.heads}")
        self.register_buffer("positions", sinusoidal_positions(max_length, config.dim), persistent=False)
        self.layers = nn.ModuleList(EncoderLayer(config.dim, config.heads, config.ff_dim, config.dropout)
                                    for _ in range(config.layers))
        self.norm = nn.LayerNorm(config.dim)
        self.pooling = config.pooling
        self.output_dim = config.dim
        # Activation checkpointing (training.activation_checkpointing): keep only each layer's input during the
        # forward and recompute the layer in the backward (same dropout masks: the RNG state is restored).
        self.checkpointing = False

    def forward(self, h: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:  # (B, L, dim) -> (B, dim)
        h = h + self.positions[: h.shape[1]]
        padding = ~valid
        recompute = self.checkpointing and torch.is_grad_enabled()
        for layer in self.layers:
            h = checkpoint(layer, h, padding, use_reentrant=False) if recompute else layer(h, padding)
        h = self.norm(h)
        return h[:, 0] if self.pooling == "cls" else masked_mean(h, valid)

    def keep_attention(self, keep: bool = True) -> None:
        """Make every layer store its attention weights (B, heads, L, L) in `last_attention` (for explanations)."""
        for layer in self.layers:
            layer.keep_attention = keep

    def attention_maps(self) -> list[torch.Tensor]:
        return [layer.last_attention for layer in self.layers if layer.last_attention is not None]
