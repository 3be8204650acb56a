"""Top-N metrics from ranks, the most-popular baseline, and the sampled protocol.

Leave-last-out (the data's split): each user has one held-out item, ranked among the items the user has not
interacted with. From its rank r (0 = first) and a cutoff K:
  HR@K = mean(r < K)                       (hit rate: the held-out item is in the top K)
  NDCG@K = mean(1 / log2(r + 2) if r < K)  (one relevant item: the ideal DCG is 1)
  recall@K = HR@K here                     (one relevant item per user; reported under both names)
  MRR = mean(1 / (r + 1))                  (untruncated)
  coverage@K = distinct items in all users' top K / catalogue size (items 1..n-1).

Two protocols are reported: full ranking over every unseen item (the honest one) and the sampled one, the
held-out item among 99 fixed sampled negatives (NCF's). Krichene & Rendle (2020, "On Sampled Metrics for Item
Recommendation") show the sampled metrics are inconsistent with the full ones: they can reorder models, and
they flatter every model (a popularity ranking scores 0.40 HR@10 sampled vs 0.085 full on MovieLens 100K).
"""

from __future__ import annotations

import torch


def metrics_from_ranks(rank: torch.Tensor, *, k: int = 10, recall_k: int = 50, top: torch.Tensor | None = None,
                       n_items: int | None = None) -> dict[str, float]:
    """HR/NDCG/recall at k, recall at recall_k, MRR (and coverage@k from the top lists) of 0-based ranks."""
    rank = rank.float()
    hit = rank < k
    out = {f"hr@{k}": float(hit.float().mean()),
           f"ndcg@{k}": float(torch.where(hit, 1.0 / torch.log2(rank + 2), torch.zeros_like(rank)).mean()),
           f"recall@{k}": float(hit.float().mean()),
           f"recall@{recall_k}": float((rank < recall_k).float().mean()),
           "mrr": float((1.0 / (rank + 1)).mean())}
    if top is not None and n_items is not None:
        out[f"coverage@{k}"] = coverage(top[:, :k], n_items)
    return out


def coverage(top: torch.Tensor, n_items: int) -> float:
    """Share of the catalogue (items 1..n_items-1; 0 is the unknown bucket) in at least one top list."""
    return float(len(torch.unique(top.long())) / max(n_items - 1, 1))


def ranks_among(scores: torch.Tensor, own: torch.Tensor) -> torch.Tensor:
    """0-based rank of `own` (B,) among `scores` (B, m): how many score strictly higher."""
    return (scores > own.unsqueeze(1)).sum(1)


def popularity_scores(popularity: torch.Tensor) -> torch.Tensor:
    """Most-popular scores: the training count, ties broken by the smaller index (the data's README breaks them by
    the smaller item id; the vocabulary orders ids by count then text, so equal counts keep an order here too)."""
    n = len(popularity)
    return popularity.double() - torch.arange(n, dtype=torch.float64) / (2 * n)


def most_popular_full(popularity: torch.Tensor, users: torch.Tensor, items: torch.Tensor, seen_mask,
                      *, k: int = 10, recall_k: int = 50) -> dict[str, float]:
    """The most-popular ranking of each (user, held-out item) among the user's unseen items (full ranking).
    `seen_mask(users)` gives (B, n_items) of the users' interactions."""
    scores = popularity_scores(popularity).expand(len(users), -1).clone()
    mask = seen_mask(users)
    rows = torch.arange(len(users))
    mask[rows, items] = False
    mask[:, 0] = True
    own = scores[rows, items]
    scores = scores.masked_fill(mask, -float("inf"))
    rank = ranks_among(scores, own).float()
    rank = torch.where(items == 0, torch.full_like(rank, len(popularity)), rank)
    return metrics_from_ranks(rank, k=k, recall_k=recall_k, top=scores.topk(k, dim=1).indices,
                              n_items=len(popularity))


def sampled_ranks(model_scores: torch.Tensor) -> torch.Tensor:
    """Ranks under the sampled protocol: column 0 is the held-out item's score, the others its sampled negatives."""
    return ranks_among(model_scores[:, 1:], model_scores[:, 0])


__all__ = ["coverage", "metrics_from_ranks", "most_popular_full", "popularity_scores", "ranks_among", "sampled_ranks"]
