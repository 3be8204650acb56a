"""A bag of token n-grams (fastText, Joulin et al. 2017): the mean of unigram and hashed n-gram embeddings.

Why: on a few thousand short texts, word order beyond a couple of tokens is rarely learnable, and a linear-ish
model over n-grams is what TF-IDF + logistic regression exploits; an LSTM or a transformer trained from scratch
loses to it there (benchmarks/README.md). Bigrams (and trigrams) are hashed into `buckets` extra rows of the
embedding table, so no n-gram vocabulary is stored: the tokenizer's state is the whole preprocessing.
Cost: one embedding gather per token and n-gram and a mean, no recurrence: the cheapest text encoder here.

`members` K > 1 (a TabM-style ensemble, Gorishniy et al. 2024): K bags in one pass, each with its own embedding
rows (one table K x dim wide, so still one gather), returned as (B, K, dim) for the concat combiner, whose layers
and heads are shared by the members. Each member is scored on every row and the members' probabilities are
averaged (models/model.py, heads.combine). Not `init`'s choice: on rt_snippets seed 0, 4 members scored 0.7793
where one bag scored 0.7820 (one seed; a prototype whose members also had their own dense layers did better), so
init cross-fits 5 bags instead (training.cross_fit; benchmarks/text_newcomer.md).
"""

from __future__ import annotations

import torch
from torch import nn

from dlforge.models.encoders.base import Encoder, encoders
from dlforge.models.encoders.sequence_layers import masked_mean

_PRIMES = (1_000_003, 8_191)  # mixing constants of the n-gram hash (any large odd numbers do)


@encoders.register("text:ngram")
class TextNgram(Encoder):
    """(B, L) token ids -> (B, dim), or (B, K, dim) with K members: mean over the text's unigram and n-gram
    (2..ngrams) embeddings, then dropout."""

    def __init__(self, config, signature: dict, regularization):
        super().__init__()
        self.pad_id = signature.get("pad_id", 0)
        self.vocab_size = signature["vocab_size"]
        self.ngrams, self.buckets = config.ngrams, config.buckets
        self.members = getattr(config, "members", 1)
        self.embedding = nn.Embedding(self.vocab_size + self.buckets, config.dim * self.members,
                                      padding_idx=self.pad_id)
        nn.init.uniform_(self.embedding.weight, -1.0 / config.dim, 1.0 / config.dim)  # fastText's initialisation
        with torch.no_grad():
            self.embedding.weight[self.pad_id].zero_()
        self.dropout = nn.Dropout(config.dropout)
        self.output_dim = config.dim

    def grams(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """All unigram and hashed n-gram ids of each row, (B, ~n*L), and which are real (no padding inside)."""
        valid = ids != self.pad_id
        pieces, masks = [ids], [valid]
        code, ok = ids, valid
        for n in range(2, self.ngrams + 1):
            code = code[:, :-1] * _PRIMES[0] + ids[:, n - 1:] * _PRIMES[1]
            ok = ok[:, :-1] & valid[:, n - 1:]
            pieces.append(self.vocab_size + torch.remainder(code * n, self.buckets))
            masks.append(ok)
            code = torch.remainder(code, 2**31 - 1)  # keeps the rolling hash in int64 range for longer n
        return torch.cat(pieces, 1), torch.cat(masks, 1)

    def forward(self, ids):  # (B, L) -> (B, dim), or (B, K, dim) with K members
        grams, valid = self.grams(ids)
        pooled = self.dropout(masked_mean(self.embedding(grams), valid))
        return pooled if self.members == 1 else pooled.unflatten(1, (self.members, self.output_dim))
