"""Why non-sequential models stall on MovieLens leave-last-out: item-kNN over the user's last L items.

Cosine item-item similarity from the training interactions; each user's items scored by their summed similarity
to the user's last L train+val items (by time), train+val items excluded; the test item's full-ranking HR@10.
numpy + pandas only, about a minute. Figures in benchmarks/recsys.md.

    DLFORGE_DATA=../shared/data python benchmarks/recsys_recency.py
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd


def main() -> None:
    path = Path(os.environ.get("DLFORGE_DATA", "../shared/data")) / "movielens_100k" / "ratings.csv.gz"
    ratings = pd.read_csv(path)
    n_users, n_items = ratings.user_id.max() + 1, ratings.item_id.max() + 1
    train = ratings[ratings.split == "train"]
    m = np.zeros((n_users, n_items), np.float32)
    m[train.user_id, train.item_id] = 1
    co = m.T @ m
    np.fill_diagonal(co, 0)
    norm = np.sqrt(m.sum(0)) + 1e-9
    similarity = co / norm[:, None] / norm[None, :]
    seen = m.copy()
    val = ratings[ratings.split == "val"]
    seen[val.user_id, val.item_id] = 1
    test = ratings[ratings.split == "test"].set_index("user_id")["item_id"]
    history = ratings[ratings.split != "test"].sort_values("timestamp", kind="stable").groupby("user_id")
    for last in (1, 3, 5, 10, None):
        hits = 0
        for user, rows in history:
            items = rows.item_id.to_numpy()
            scores = similarity[items if last is None else items[-last:]].sum(0)
            scores[seen[user] > 0] = -np.inf
            scores[0] = -np.inf
            hits += int((scores > scores[test[user]]).sum() < 10)
        print(f"item-kNN over the last {last or 'all'} item(s): test HR@10 {hits / len(test):.4f}")


if __name__ == "__main__":
    main()
