"""combiner.transitions: an item -> next item Markov chain counted from the train rows only, added to the ranking
scores; and the leave-last-out protocol it relies on (a test row's history ends with the val item, never the test
item, even when the file puts the test row first at the same timestamp)."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from recommend_data import ranking_recipe
from test_recommend_sequence import _chain_interactions


def _model(recipe: dict):
    from dlforge.data import prepare
    from dlforge.data.interactions import interaction_tensors
    from dlforge.models import build_model
    from dlforge.recipe.io import load_recipe

    loaded = load_recipe(recipe)
    prepared = prepare(loaded)
    model = build_model(loaded, prepared.signature())
    model.attach(interaction_tensors(loaded, prepared))
    return model.eval(), prepared


def test_transitions_count_train_rows_only_and_test_history_ends_with_val(tmp_path, monkeypatch):
    # The file's own split column decides (as MovieLens'); u0's val and test share a timestamp and the test row
    # comes first in the file: the test row's history must still start with the val item.
    rows = [("u0", "a", 1, "train"), ("u0", "b", 2, "train"), ("u0", "c", 3, "train"), ("u0", "e", 4, "test"),
            ("u0", "d", 4, "val"), ("u1", "a", 1, "train"), ("u1", "c", 2, "train"), ("u1", "b", 3, "val"),
            ("u1", "d", 5, "test"), ("u2", "a", 1, "train"), ("u2", "b", 2, "train"), ("u2", "e", 3, "val"),
            ("u2", "c", 4, "test"), ("u3", "d", 1, "train"), ("u3", "e", 2, "train"), ("u3", "g", 3, "train"),
            ("u3", "h", 4, "train"), ("u3", "a", 5, "val"), ("u3", "b", 6, "test")]
    path = tmp_path / "interactions.csv"
    pd.DataFrame([(u, i, 1, t, s) for u, i, t, s in rows],
                 columns=["user", "item", "rating", "ts", "split"]).to_csv(path, index=False)
    recipe = ranking_recipe({"interactions": path}, side=False, combiner={
        "name": "mf", "dim": 4, "history": 3, "transitions": 2, "transition_decay": 0.5, "transition_weight": 2.0})
    model, prepared = _model(recipe)
    vocab = list(prepared.inputs["item"].vocabulary_)
    ix = {name: i for i, name in enumerate(vocab)}
    n = model.n_items
    got = {(vocab[int(k) // n], vocab[int(k) % n]): round(float(v), 6)
           for k, v in zip(model.state.trans_keys, model.state.trans_values)}
    # train sequences: u0 a b c, u1 a c, u2 a b, u3 d e g h. a -> b 1 + 1, a -> c 0.5 + 1 (two steps at 0.5; one
    # step): row a totals 3.5; b -> c 1; d -> e 1, d -> g 0.5; e -> g 1, e -> h 0.5; g -> h 1. Each row divided by
    # its total + 5. Nothing that involves a val or test row (no c -> d for u0, no h -> a for u3).
    assert got == {("a", "b"): round(2 / 8.5, 6), ("a", "c"): round(1.5 / 8.5, 6), ("b", "c"): round(1 / 6, 6),
                   ("d", "e"): round(1 / 6.5, 6), ("d", "g"): round(0.5 / 6.5, 6), ("e", "g"): round(1 / 6.5, 6),
                   ("e", "h"): round(0.5 / 6.5, 6), ("g", "h"): round(1 / 6, 6)}

    val, test = prepared.splits["val"].x, prepared.splits["test"].x
    users = list(prepared.inputs["user"].vocabulary_)
    expected_test = {"u0": ["d", "c", "b"], "u1": ["b", "c", "a"], "u2": ["e", "b", "a"], "u3": ["a", "h", "g"]}
    expected_val = {"u0": ["c", "b", "a"], "u1": ["c", "a", 0], "u2": ["b", "a", 0], "u3": ["h", "g", "e"]}
    for x, expected in ((test, expected_test), (val, expected_val)):
        history = model.history(x)
        for row, user in enumerate(x["user"].tolist()):
            assert [vocab[i] if i else 0 for i in history[row].tolist()] == expected[users[user]]
        assert not bool((history == x["item"].unsqueeze(1)).any())  # never the row's own item

    # What each ranking leaves out: a val row the user's train items only (u0's test item e stays a candidate: the
    # future is not known), a test row train + val (u0's val item d is left out); never the row's own item.
    for x, left_out in ((val, {"u0": "abc", "u1": "ac", "u2": "ab", "u3": "degh"}),
                        (test, {"u0": "abcd", "u1": "abc", "u2": "abe", "u3": "deagh"})):
        mask = model.seen_before(x["user"], x["item"])
        for row, user in enumerate(x["user"].tolist()):
            assert {vocab[i] for i in torch.nonzero(mask[row]).flatten().tolist()} == set(left_out[users[user]])
    # Serving leaves out everything the user has (no row item): u0's a-e.
    assert model.seen_mask(torch.tensor([users.index("u0")]))[0].sum() == 5

    # The term by hand: u1's val row has history (c, a): c leads nowhere, a (weight 0.5) to b and c.
    row = val["user"].tolist().index(users.index("u1"))
    term = model.transition_scores(val)[row]
    assert torch.allclose(term[ix["b"]], torch.tensor(0.5 * 2 / 8.5))
    assert torch.allclose(term[ix["c"]], torch.tensor(0.5 * 1.5 / 8.5))
    assert float(term.sum()) == pytest.approx(0.5 * 3.5 / 8.5)
    # The sparse path (catalogues over DENSE_TRANSITIONS_MAX items) gives the same terms as the dense rows.
    import dlforge.models.recommend as recommend

    for x in (val, test, {"user": test["user"]}):
        dense = model.transition_scores(x)
        monkeypatch.setattr(recommend, "DENSE_TRANSITIONS_MAX", 0)
        assert torch.allclose(model.transition_scores(x), dense)
        monkeypatch.undo()
    # Added at ranking time (weight 2), never while training.
    with torch.no_grad():
        ranked = model.score_all(val)
        model.train()
        trained = model.score_all(val)
        model.eval()
        pair = model(val)["rating"][:, 0]
    assert torch.allclose(ranked - trained, 2.0 * model.transition_scores(val))
    assert torch.allclose(pair, ranked[torch.arange(len(pair)), val["item"]], atol=1e-6)


@pytest.mark.slow  # two trainings: 23 s at load 15
def test_transitions_rank_the_planted_successor_and_are_served(tmp_path):
    import dlforge

    paths, cycle = _chain_interactions(tmp_path)
    combiner = {"name": "mf", "dim": 8, "history": 4, "biases": False}
    results = {}
    for name, extra in (("plain", {}), ("chain", {"transitions": 1, "transition_weight": 100.0})):
        recipe = ranking_recipe(paths, side=False, combiner={**combiner, **extra}, negatives=4)
        recipe["training"].update(epochs=1, batch_size=64)
        results[name] = dlforge.train(recipe, out=tmp_path / name, progress=False).metrics
    # One epoch of MF learns little of the walk; the chain counted from the other users' train rows knows each
    # item's successor, and the test item is the successor of the val item (the history's first).
    assert results["chain"]["test"]["mrr"] >= 0.95
    assert results["plain"]["test"]["mrr"] < 0.6
    assert results["chain"]["val"]["hr@10"] == 1.0
    predictor = dlforge.load(tmp_path / "chain")  # the counts are in model.safetensors
    assert len(predictor.recommender().model.state.trans_keys) == len(cycle)
    after = {f"i{a}": f"i{b}" for a, b in zip(cycle, list(cycle[1:]) + [cycle[0]])}
    raw = pd.read_csv(paths["interactions"]).sort_values("ts")
    last = raw.groupby("user").item.last()
    assert all(predictor.recommend(u, k=1)["items"][0]["item"] == after[last[u]] for u in list(last.index)[:10])


def test_transitions_need_a_history_and_an_interaction_output(tmp_path):
    from dlforge.core.errors import RecipeError
    from dlforge.recipe.io import load_recipe

    paths, _ = _chain_interactions(tmp_path)
    recipe = ranking_recipe(paths, side=False, combiner={"name": "mf", "dim": 8, "transitions": 3})
    with pytest.raises(RecipeError, match="combiner.transitions"):
        load_recipe(recipe)


@pytest.mark.slow  # three trainings: 20 s at load 15
def test_refit_trains_on_train_and_val_and_keeps_the_first_models_val(tmp_path):
    import dlforge
    from dlforge.data import prepare
    from dlforge.recipe.io import load_recipe
    from dlforge.training.refit import pooled_splits

    paths, _ = _chain_interactions(tmp_path, users=30)
    recipe = ranking_recipe(paths, side=False, combiner={"name": "mf", "dim": 8, "history": 4, "transitions": 1},
                            negatives=4)
    recipe["training"].update(epochs=3, batch_size=64, early_stopping={"metric": "val.hr@10", "patience": 5})
    plain = dlforge.train(recipe, out=tmp_path / "plain", progress=False).metrics
    recipe["training"]["refit"] = True
    refitted = dlforge.train(recipe, out=tmp_path / "refit", progress=False).metrics
    # val is the first model's (the same seed, the same training); test and the artifact are the refit's
    assert refitted["val"] == plain["val"]
    assert refitted["refit"]["epochs"] == plain["best_epoch"]
    assert refitted["refit"]["rows"] == 30 * 7  # 6 train + 1 val rows per user
    for name in ("most_popular",):  # popularity counted on train, as documented
        assert refitted["baseline"][name]["hr@10"] == plain["baseline"][name]["hr@10"]
    assert not (tmp_path / "refit" / "refit").exists()
    model = dlforge.load(tmp_path / "refit").recommender().model
    prepared = prepare(load_recipe(recipe))
    pooled = pooled_splits(prepared)
    assert set(pooled) == {"train", "test"}
    assert torch.equal(pooled["train"].x["item"][-30:], prepared.splits["val"].x["item"])  # val after train
    # the refit counted the val rows' transitions too (train + val sequences): more keys than train alone
    first = dlforge.load(tmp_path / "plain").recommender().model
    assert float(model.state.trans_values.sum()) > float(first.state.trans_values.sum())
    assert float(model.state.popularity.sum()) == float(first.state.popularity.sum()) + 30


def test_refit_is_for_recommenders_and_not_with_cross_fit(tmp_path):
    from dlforge.core.errors import RecipeError
    from dlforge.recipe.io import load_recipe

    paths, _ = _chain_interactions(tmp_path)
    recipe = ranking_recipe(paths, side=False, combiner={"name": "mf", "dim": 8})
    recipe["training"].update(refit=True, cross_fit=3)
    with pytest.raises(RecipeError, match="training.refit: cross_fit"):
        load_recipe(recipe)
    tabular = {"data": {"source": str(paths["interactions"])}, "inputs": [{"name": "ts", "type": "number"}],
               "outputs": [{"name": "rating", "type": "number"}], "training": {"refit": True}}
    with pytest.raises(RecipeError, match="training.refit: the refit on train"):
        load_recipe(tabular)
