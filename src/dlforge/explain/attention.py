"""Attention maps and attention rollout (Abnar & Zuidema 2020, "Quantifying Attention Flow in Transformers").

Raw attention of one layer says little about which input tokens reach the output, because every layer
mixes tokens again. Rollout follows the flow through the stack: per layer the heads' mean attention plus
the identity for the residual path (0.5 A + 0.5 I, rows renormalised), multiplied from the first layer
up. The pooled sentence vector is read from [CLS] (row 0) or as the mean over real tokens, so its token
relevance is that row (or the mean of those rows) of the rollout. Cost: one forward pass with weights kept.
"""

from __future__ import annotations

import torch
from torch import nn

from dlforge.core.errors import ModelError


def attention_maps(encoder: nn.Module, encoder_name: str, ids: torch.Tensor, pad_id: int) -> list[torch.Tensor]:
    """Each layer's attention (N, heads, L, L) for token ids (N, L), from a transformer or MiniLM encoder."""
    if encoder_name == "transformer":
        encoder.keep_attention(True)
        try:
            with torch.no_grad():
                encoder(ids)
            return [a.float() for a in encoder.attention_maps()]
        finally:
            encoder.keep_attention(False)
    if encoder_name == "minilm":
        backbone = encoder.backbone
        previous = getattr(backbone.config, "_attn_implementation", None)
        # SDPA kernels do not return weights; the eager path computes the same attention and does.
        backbone.set_attn_implementation("eager")
        try:
            with torch.no_grad():
                out = backbone(input_ids=ids, attention_mask=(ids != pad_id).long(), output_attentions=True)
        finally:
            if previous and previous != "eager":
                backbone.set_attn_implementation(previous)
        return [a.float() for a in out.attentions]
    raise ModelError(f"attention maps need a transformer or minilm text encoder; this one is '{encoder_name}'",
                     where="--attention", hint="drop --attention (token attributions work for every token encoder)")


def rollout(maps: list[torch.Tensor], valid: torch.Tensor) -> torch.Tensor:
    """(N, L, L) attention rollout over the layers: row i says how much each token flowed into position i."""
    n, _, length, _ = maps[0].shape
    eye = torch.eye(length).expand(n, length, length)
    result = eye.clone()
    for layer in maps:
        a = 0.5 * layer.mean(1) + 0.5 * eye
        a = a * valid[:, None, :].float()  # padding never carries information (its keys are masked anyway)
        a = a / a.sum(-1, keepdim=True).clamp(min=1e-12)
        result = a @ result
    return result


def token_relevance(rolled: torch.Tensor, valid: torch.Tensor, pooling: str) -> torch.Tensor:
    """(N, L) relevance of each token for the pooled vector the head reads: [CLS]'s row, or the real rows' mean."""
    if pooling == "cls":
        return rolled[:, 0]
    w = valid.float()
    return (rolled * w[:, :, None]).sum(1) / w.sum(1, keepdim=True).clamp(min=1.0)


__all__ = ["attention_maps", "rollout", "token_relevance"]
