"""Text encoders over token ids (B, L) with [PAD]=0: embed (bag of embeddings), cnn, lstm/gru, transformer.

Registered as `text:<name>` so that `cnn` can mean a 2-D image CNN for images and a 1-D token CNN here.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from dlforge.models.encoders.base import Encoder, encoders
from dlforge.models.encoders.sequence_layers import RNNBackbone, TransformerBackbone, masked_max, masked_mean


class _TokenEncoder(Encoder):
    def __init__(self, config, signature: dict):
        super().__init__()
        self.pad_id = signature.get("pad_id", 0)
        self.embedding = nn.Embedding(signature["vocab_size"], config.dim, padding_idx=self.pad_id)
        if getattr(config, "freeze_embeddings", False):  # fixed vectors (a distilled student keeps the teacher's)
            self.embedding.weight.requires_grad_(False)

    def embed(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L) ids -> (B, L, dim) vectors and the (B, L) mask of real tokens."""
        return self.embedding(ids), ids != self.pad_id


@encoders.register("text:embed")
class TextEmbed(_TokenEncoder):
    """Mean or max of the token embeddings (fastText-like bag of embeddings)."""

    def __init__(self, config, signature: dict, regularization):
        super().__init__(config, signature)
        self.pool = masked_mean if config.pooling == "mean" else masked_max
        self.output_dim = config.dim

    def forward(self, ids):  # (B, L) -> (B, dim)
        return self.pool(*self.embed(ids))


@encoders.register("text:cnn")
class TextCNN(_TokenEncoder):
    """1-D convolutions of several widths over the tokens, max over time (Kim 2014)."""

    def __init__(self, config, signature: dict, regularization):
        super().__init__(config, signature)
        self.convs = nn.ModuleList(nn.Conv1d(config.dim, config.filters, k, padding=k // 2) for k in config.kernel_sizes)
        self.dropout = nn.Dropout(getattr(config, "dropout", 0.0))  # on the pooled vector (Kim 2014)
        self.output_dim = config.filters * len(config.kernel_sizes)
        # layers > 1: residual 3-wide convolutions over the first layer's maps (context across its kernels' spans).
        self.stack = nn.ModuleList(nn.Conv1d(self.output_dim, self.output_dim, 3, padding=1)
                                   for _ in range(getattr(config, "layers", 1) - 1))
        # keep_token_maps(): the last forward's (B, output_dim, L) maps before max pooling stay readable (a
        # distillation token hint regresses them on the teacher's token states); off by default, never exported.
        self._keep_maps, self._maps = False, None

    def forward(self, ids):  # (B, L) -> (B, filters * kernels)
        # Padding columns past the batch's longest text change nothing (the [PAD] row is zero, as the convolutions'
        # own padding, and max over time skips them), so they are cut: with `training.sampling: by_length` a batch
        # then costs its real length, not the split's longest. One host sync per batch; an export keeps the
        # dynamic length (as minilm.py).
        if not (torch.compiler.is_exporting() or torch.jit.is_tracing()):
            ids = ids[:, :max(1, int((ids != self.pad_id).sum(1).max()))]
        h, valid = self.embed(ids)
        h = h.transpose(1, 2)  # (B, dim, L)
        length = ids.shape[1]
        h = torch.cat([torch.relu(conv(h))[:, :, :length] for conv in self.convs], dim=1)  # (B, C, L)
        keep = valid.unsqueeze(1).to(h.dtype)
        for conv in self.stack:  # padding columns are zeroed first, so trailing padding still changes nothing
            h = h * keep
            h = h + torch.relu(conv(h))
        if self._keep_maps:
            self._maps = h
        return self.dropout(masked_max(h.transpose(1, 2), valid))

    def keep_token_maps(self, keep: bool = True) -> None:
        self._keep_maps, self._maps = keep, None

    def token_maps(self) -> torch.Tensor | None:
        """The last forward's per-token feature maps (B, output_dim, L), L the batch's longest real text; None
        unless `keep_token_maps()` was called first."""
        return self._maps


@encoders.register("text:lstm")
@encoders.register("text:gru")
class TextRNN(_TokenEncoder):
    """A (bi-directional) LSTM/GRU over packed sequences, so padding costs no compute."""

    cost_follows_length = True

    def __init__(self, config, signature: dict, regularization):
        super().__init__(config, signature)
        self.rnn = RNNBackbone(config, config.dim)
        self.output_dim = self.rnn.output_dim

    def forward(self, ids):  # (B, L) -> (B, hidden * directions)
        return self.rnn(*self.embed(ids))


@encoders.register("text:transformer")
class TextTransformer(_TokenEncoder):
    """Multi-head self-attention over tokens with sinusoidal positions and a padding mask; [CLS] or mean pooling.

    `keep_attention()` then a forward pass leaves each layer's (B, heads, L, L) weights in `attention_maps()`.
    """

    def __init__(self, config, signature: dict, regularization):
        super().__init__(config, signature)
        self.scale = math.sqrt(config.dim)  # embeddings scaled as in Vaswani et al. so positions do not dominate
        self.backbone = TransformerBackbone(config, signature["max_length"])
        self.output_dim = self.backbone.output_dim

    def forward(self, ids):  # (B, L) -> (B, dim)
        h, valid = self.embed(ids)
        return self.backbone(h * self.scale, valid)

    def keep_attention(self, keep: bool = True) -> None:
        self.backbone.keep_attention(keep)

    def attention_maps(self) -> list[torch.Tensor]:
        return self.backbone.attention_maps()
