"""Tiny synthetic interaction tables for the recommendation tests (MovieLens itself is research-use only)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd


def write_interactions(folder: Path, *, users: int = 30, items: int = 20, per_user: int = 8, seed: int = 0,
                       duplicates: int = 0) -> dict[str, Path]:
    """interactions.csv (user, item, rating, ts), users.csv (user, age, group), items.csv (item, genre).

    Users of group "a" like even items, "b" odd ones: a side feature that predicts taste (cold start)."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(users):
        group = "a" if u % 2 == 0 else "b"
        liked = np.arange(items)[(np.arange(items) % 2) == (0 if group == "a" else 1)]
        chosen = rng.choice(liked, size=min(per_user, len(liked)), replace=False)
        for t, i in enumerate(chosen):
            rows.append((f"u{u}", f"i{i}", int(1 + (i + u) % 5), 1000 * u + t))
    for d in range(duplicates):  # repeat a user's first pair later in time
        user, item, rating, ts = rows[d * per_user]
        rows.append((user, item, 2, ts + 500))
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"interactions": folder / "interactions.csv", "users": folder / "users.csv", "items": folder / "items.csv"}
    pd.DataFrame(rows, columns=["user", "item", "rating", "ts"]).to_csv(paths["interactions"], index=False)
    pd.DataFrame({"user": [f"u{u}" for u in range(users)], "age": [20 + u for u in range(users)],
                  "group": ["a" if u % 2 == 0 else "b" for u in range(users)]}).to_csv(paths["users"], index=False)
    pd.DataFrame({"item": [f"i{i}" for i in range(items)],
                  "genre": ["even" if i % 2 == 0 else "odd" for i in range(items)]}).to_csv(paths["items"], index=False)
    return paths


def ranking_recipe(paths: dict[str, Path], *, combiner: dict | None = None, side: bool = True, **output) -> dict:
    inputs = [{"name": "user", "type": "id", "role": "user"}, {"name": "item", "type": "id", "role": "item"}]
    join = []
    if side:
        inputs += [{"name": "group", "type": "category", "tower": "user"},
                   {"name": "genre", "type": "category", "tower": "item"}]
        join = [{"source": str(paths["users"]), "key": "user"}, {"source": str(paths["items"]), "key": "item"}]
    return {
        "name": "tiny-recommender",
        "data": {"source": str(paths["interactions"]), "join": join,
                 "split": {"leave_last_out": {"user": "user", "time": "ts"}}},
        "inputs": inputs,
        "outputs": [{"name": "rating", "type": "interaction", "negatives": 3, **output}],
        "combiner": combiner or ({"name": "two_tower", "dim": 8, "id_dim": 8, "id_dropout": 0.2} if side
                                 else {"name": "mf", "dim": 8}),
        "training": {"epochs": 3, "batch_size": 32, "optimizer": {"name": "adam", "lr": 0.02}, "seed": 0,
                     "threads": 1},
    }
