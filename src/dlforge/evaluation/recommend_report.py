"""Beside every ranking run: the sampled protocol for the model, and the most-popular baseline under both
protocols, on the same held-out rows (metrics.json's `sampled` and `baseline`).

The sampled protocol ranks each held-out item among fixed sampled negatives (`sampled_negatives`, a table of
(user, item) rows, e.g. MovieLens' 99 per user); a negative or held-out item the model never saw in training is
scored as the unknown item (index 0), as a served model would score it. It is reported because papers use it,
beside full ranking, because it misleads (Krichene & Rendle 2020; evaluation/ranking.py).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from dlforge.data.features.base import as_strings
from dlforge.data.readers import ReadOptions, load_table
from dlforge.evaluation.ranking import (metrics_from_ranks, most_popular_full, popularity_scores, ranks_among)

SAMPLED_NOTE = ("1 held-out item among the file's sampled negatives per user: flatters every model and can reorder "
                "them (Krichene & Rendle 2020); full ranking is the number to trust")


def negatives_matrix(recipe, prepared, users: torch.Tensor, base_dir: Path | None) -> torch.Tensor | None:
    """(B, m) item indices of each row's user's sampled negatives (padded with -1), or None without a file."""
    output = recipe.outputs[0]
    if output.sampled_negatives is None:
        return None
    ids = {f.role: f for f in recipe.inputs if f.type == "id"}
    table = load_table(output.sampled_negatives, base_dir=base_dir, field="outputs.0.sampled_negatives",
                       options=ReadOptions.of(recipe.data))
    where = "outputs.0.sampled_negatives"
    user_codes = prepared.inputs[ids["user"].name].codes(as_strings(table.column(ids["user"].name, field_path=where)))
    item_codes = prepared.inputs[ids["item"].name].codes(as_strings(table.column(ids["item"].name, field_path=where)))
    order = np.argsort(user_codes, kind="stable")
    user_codes, item_codes = user_codes[order], item_codes[order]
    counts = np.bincount(user_codes, minlength=int(users.max()) + 1)
    width = int(counts.max()) if len(counts) else 0
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    position = np.arange(len(user_codes)) - starts[user_codes]
    grid = np.full((len(counts), max(width, 1)), -1, dtype=np.int64)
    grid[user_codes, position] = item_codes
    return torch.from_numpy(grid)[users.clamp(max=len(counts) - 1)]


@torch.no_grad()
def ranking_report(model, recipe, prepared, *, base_dir: Path | None = None, part: str = "test") -> dict:
    """{"sampled": model metrics, "baseline": most popular (full and sampled)} on `part` (test, else val)."""
    part = part if part in prepared.splits else "val"
    split = prepared.splits[part]
    x = split.x
    users, items = x[model.user_input], x[model.item_input]
    started = time.perf_counter()
    popular = most_popular_full(model.state.popularity.cpu(), users, items, model.seen_mask)
    baseline = {"split": part, "most_popular": {**popular, "fit_seconds": round(time.perf_counter() - started, 3)}}
    out = {"baseline": baseline}
    negatives = negatives_matrix(recipe, prepared, users, base_dir)
    if negatives is None:
        return out
    padded = negatives < 0
    candidates = torch.cat([items.unsqueeze(1), negatives.clamp(min=0)], 1)
    model.eval()
    scores = torch.cat([model.score_items({k: v[i:i + 512] for k, v in x.items()}, candidates[i:i + 512]).float()
                        for i in range(0, len(users), 512)])
    scores[:, 1:] = scores[:, 1:].masked_fill(padded, -float("inf"))
    pop = popularity_scores(model.state.popularity.cpu())[candidates].float()
    pop[:, 1:] = pop[:, 1:].masked_fill(padded, -float("inf"))
    sampled = {k: v for k, v in metrics_from_ranks(ranks_among(scores[:, 1:], scores[:, 0])).items()
               if not k.startswith("recall@50")}
    popular_sampled = {k: v for k, v in metrics_from_ranks(ranks_among(pop[:, 1:], pop[:, 0])).items()
                       if not k.startswith("recall@50")}
    note = {"negatives_per_user": int((~padded).sum(1).float().mean()), "note": SAMPLED_NOTE}
    out["sampled"] = {part: sampled, **note}
    baseline["most_popular_sampled"] = {**popular_sampled, "fit_seconds": 0.0}
    return out


__all__ = ["SAMPLED_NOTE", "negatives_matrix", "ranking_report"]
