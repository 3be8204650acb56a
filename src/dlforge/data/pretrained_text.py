"""Tokenizing for a pretrained text backbone: its own WordPiece vocabulary (from the wheel), never one trained here.

The text becomes `[CLS] pieces… [SEP]` padded with [PAD] (id 0) to the longest text of the split, at
most `max_length` in all (so at most max_length - 2 pieces; longer texts are cut and counted).
"""

from __future__ import annotations

import numpy as np
import torch

PRETRAINED_TEXT = {"minilm"}


def pretrained_tokenizer(backbone: str, *, where: str):
    from tokenizers import Tokenizer

    from dlforge.core.assets import minilm_dir

    tokenizer = Tokenizer.from_file(str(minilm_dir(where) / "tokenizer.json"))
    # The shipped tokenizer.json pads and truncates to 128 by itself; dlforge does both, and counts the cuts.
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer


def encode_pretrained(tokenizer, texts: list[str], max_length: int) -> tuple[torch.Tensor, int, int]:
    """(n, L) int64 ids with [CLS]/[SEP], how many texts were truncated, and the real pieces kept."""
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    encodings = tokenizer.encode_batch(texts, add_special_tokens=False)
    limit = max_length - 2
    lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(encodings))
    width = int(min(limit, lengths.max(initial=0))) + 2
    out = np.zeros((len(texts), width), dtype=np.int64)
    out[:, 0] = cls
    for i, e in enumerate(encodings):
        piece = e.ids[:limit]
        out[i, 1:1 + len(piece)] = piece
        out[i, 1 + len(piece)] = sep
    return torch.from_numpy(out), int((lengths > limit).sum()), int(np.minimum(lengths, limit).sum())
