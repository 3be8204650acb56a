"""The sequence-aware user (combiner.history): a row's history is only what came before it, and the model learns
a planted "item after item X" order that a bag of items cannot see."""

from __future__ import annotations

import numpy as np
import pytest
import pandas as pd
import torch

from recommend_data import ranking_recipe


def _chain_interactions(folder, *, users: int = 60, chain: int = 30, length: int = 8, seed: int = 0):
    """Every user walks `length` consecutive steps of one hidden cycle over the items (a random permutation),
    starting anywhere: the next item is the successor of the last one, whatever else the user has seen."""
    rng = np.random.default_rng(seed)
    cycle = rng.permutation(chain)
    rows = []
    for u in range(users):
        start = rng.integers(chain)
        for t in range(length):
            rows.append((f"u{u}", f"i{cycle[(start + t) % chain]}", 1, 1000 * u + t))
    rng.shuffle(rows)  # the file's order is not the time order
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "interactions.csv"
    pd.DataFrame(rows, columns=["user", "item", "rating", "ts"]).to_csv(path, index=False)
    return {"interactions": path}, cycle


def test_history_stops_before_the_row_and_the_planted_order_is_learned(tmp_path):
    import dlforge
    from dlforge.data import prepare
    from dlforge.recipe.io import load_recipe

    paths, cycle = _chain_interactions(tmp_path)
    recipe = ranking_recipe(paths, side=False, combiner={"name": "mf", "dim": 16, "history": 4, "biases": False},
                            loss="softmax", negatives=8)
    recipe["training"].update(epochs=10, batch_size=64)
    result = dlforge.train(recipe, out=tmp_path / "run", progress=False)
    model = dlforge.load(tmp_path / "run").recommender().model  # through the artifact: buffers reloaded
    prepared = prepare(load_recipe(recipe))
    after = {f"i{a}": f"i{b}" for a, b in zip(cycle, np.roll(cycle, -1))}
    vocab = prepared.inputs["item"].vocabulary_
    index = {name: i for i, name in enumerate(vocab)}
    for part in ("train", "val", "test"):
        x = prepared.splits[part].x
        history = model.history(x)
        # the row's own item is never in its history, nor anything later in time
        assert not bool((history == x["item"].unsqueeze(1)).any()), part
        if part != "train":
            # the most recent history item is the one just before the held-out one in the walk
            predecessor = {b: a for a, b in after.items()}
            expected = torch.tensor([index[predecessor[vocab[int(i)]]] for i in x["item"]])
            assert torch.equal(history[:, 0], expected), part
    # test: the val item is in the history, the test item is not (checked above); val: the test item is not
    val, test = prepared.splits["val"].x, prepared.splits["test"].x
    order = torch.argsort(test["user"])
    assert torch.equal(model.history(test)[order, 0], val["item"][torch.argsort(val["user"])])
    # an unknown item cannot be placed in time: no history; serving (no item) reads everything, the test item first
    assert not bool(model.history({**test, "item": torch.zeros_like(test["item"])}).any())
    assert torch.equal(model.history({"user": test["user"]})[:, 0], test["item"])
    # The order is learned: 23 candidates per user (30 items less 7 seen): chance MRR is about 0.16; the same MF
    # without history (25 epochs) gets MRR 0.39 (it learns the walk's neighbourhood, not which end comes next),
    # with history 4 (10 epochs) 0.97.
    assert result.metrics["test"]["hr@10"] >= 0.9
    assert result.metrics["test"]["mrr"] >= 0.8
    # Serving reads the whole history: the top item for a user is the successor of their last (test) item.
    predictor = dlforge.load(tmp_path / "run")
    raw = pd.read_csv(paths["interactions"]).sort_values("ts")
    last = raw.groupby("user").item.last()
    hits = [predictor.recommend(u, k=3)["items"][0]["item"] == after[last[u]] for u in list(last.index)[:20]]
    assert sum(hits) >= 15


def test_history_needs_a_time_order():
    import pytest

    from dlforge.core.errors import RecipeError
    from dlforge.recipe.io import load_recipe

    recipe = ranking_recipe({"interactions": "x.csv"}, side=False, combiner={"name": "mf", "dim": 4, "history": 3})
    recipe["data"]["split"] = {}
    with pytest.raises(RecipeError, match="combiner.history: a sequence-aware user needs"):
        load_recipe(recipe)


def test_sasrec_blocks_and_full_softmax_learn_the_planted_order(tmp_path):
    """history_layers (self-attention blocks over the history) trained by the full softmax over the catalogue."""
    import dlforge

    paths, _ = _chain_interactions(tmp_path)
    recipe = ranking_recipe(paths, side=False, loss="full_softmax",
                            combiner={"name": "mf", "dim": 16, "history": 4, "biases": False, "history_layers": 1,
                                      "history_heads": 2, "history_dropout": 0.1})
    recipe["training"].update(epochs=10, batch_size=64)
    result = dlforge.train(recipe, out=tmp_path / "run", progress=False)
    # chance MRR about 0.16 (23 candidates); the pooled history gets 0.97 (test above)
    assert result.metrics["test"]["mrr"] >= 0.8
    assert dlforge.load(tmp_path / "run").recommend("u0", k=3)["items"]  # serving reads the blocks back


def _mood_ratings(folder, *, users: int = 80, items: int = 25, sessions: int = 4, per_session: int = 4, seed: int = 0):
    """Ratings = an item effect + the user's mood of the session (4 ratings in a row, the mood redrawn per
    session): the last two ratings (val, test) share their session with the two train ratings before them."""
    rng = np.random.default_rng(seed)
    effect = rng.normal(0, 0.7, items)
    rows = []
    for u in range(users):
        chosen = rng.choice(items, size=sessions * per_session, replace=False)
        for t, i in enumerate(chosen):
            if t % per_session == 0:
                mood = rng.choice([-1.2, 1.2])
            rows.append((f"u{u}", f"i{i}", float(np.clip(np.round(3 + effect[i] + mood), 1, 5)), 100 * u + t))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "interactions.csv"
    pd.DataFrame(rows, columns=["user", "item", "rating", "ts"]).to_csv(path, index=False)
    return {"interactions": path}


def _rating_recipe(paths) -> dict:
    recipe = ranking_recipe(paths, side=False)
    recipe["outputs"] = [{"name": "rating", "type": "number"}]
    recipe["training"].update(epochs=30, batch_size=64)
    return recipe


@pytest.mark.slow  # two trainings of 30 epochs: ~15 s on an idle core
def test_history_ratings_carry_the_session_mood(tmp_path):
    import dlforge

    paths = _mood_ratings(tmp_path)
    base = _rating_recipe(paths)
    rmse = {}
    for ratings in (False, True):
        recipe = {**base, "combiner": {"name": "mf", "dim": 4, "biases": True, "l2": 0.01, "history": 3,
                                       "history_ratings": ratings}}
        result = dlforge.train(recipe, out=tmp_path / f"run{ratings}", progress=False)
        rmse[ratings] = result.metrics["test"]["rmse"]
    # the mood is +-1.2 stars: a model that reads the recent ratings removes most of it
    assert rmse[True] < 0.75 * rmse[False], rmse
    predictor = dlforge.load(tmp_path / "runTrue")  # the ratings buffer is in the artifact
    assert predictor.model.state.seq_ratings.numel() == 80 * 16


def test_recent_deviation_by_hand(tmp_path):
    from dlforge.models.recommenders import MatrixFactorization
    from dlforge.recipe.io import load_recipe

    base = _rating_recipe({"interactions": tmp_path / "x.csv"})
    # by hand: weights (0.5, 0.25, 0) on deviations from b + b_u + b_i of the last 3 ratings
    scorer = MatrixFactorization(load_recipe({**base, "combiner": {"name": "mf", "dim": 2, "history": 3,
                                                                   "history_ratings": True}}).combiner,
                                 n_users=3, n_items=5, side={})
    with torch.no_grad():
        scorer.global_bias.fill_(0.1)
        scorer.user_bias.weight.copy_(torch.tensor([[0.0], [0.2], [0.0]]))
        scorer.item_bias.weight.copy_(torch.tensor([[0.0], [0.3], [-0.3], [0.0], [1.0]]))
        scorer.deviation_weights.copy_(torch.tensor([0.5, 0.25, 1.0]))
    got = scorer.recent_deviation(torch.tensor([1]), torch.tensor([[1, 2, 0]]), torch.tensor([[1.0, -1.0, 9.0]]))
    # item 1: 1.0 - (0.1 + 0.2 + 0.3) = 0.4; item 2: -1.0 - (0.1 + 0.2 - 0.3) = -1.0; the padding counts nothing
    assert got.item() == pytest.approx(0.5 * 0.4 + 0.25 * -1.0)


def test_history_options_need_a_history_and_the_right_output():
    from dlforge.core.errors import RecipeError
    from dlforge.recipe.io import load_recipe

    recipe = ranking_recipe({"interactions": "x.csv"}, side=False,
                            combiner={"name": "mf", "dim": 4, "history": 3, "history_ratings": True})
    with pytest.raises(RecipeError, match="combiner.history_ratings: .* a number \\(rating\\) output"):
        load_recipe(recipe)  # an interaction output has no ratings to read
    recipe["combiner"] = {"name": "mf", "dim": 4, "history_layers": 1}
    with pytest.raises(RecipeError, match="combiner.history_layers: .* set history > 0"):
        load_recipe(recipe)
    recipe["combiner"] = {"name": "mf", "dim": 6, "history": 3, "history_layers": 1, "history_heads": 4}
    with pytest.raises(RecipeError, match="combiner.history_heads: 4 does not divide dim 6"):
        load_recipe(recipe)
