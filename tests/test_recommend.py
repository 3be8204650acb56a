"""Recommendation building blocks: the id feature, the negative sampler, the ranking metrics, the baseline,
the interaction-table policies (duplicates, time split), and the three recommender models' shapes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dlforge.core.errors import DataError, RecipeError
from dlforge.data.features.id import IdFeature
from dlforge.evaluation.ranking import coverage, metrics_from_ranks, most_popular_full, sampled_ranks
from dlforge.models.negatives import NegativeSampler
from dlforge.recipe import IdInput
from dlforge.recipe.io import load_recipe
from recommend_data import ranking_recipe, write_interactions


# ---------------------------------------------------------------- the id feature
def test_id_vocabulary_unknown_bucket_and_state_round_trip():
    feature = IdFeature(IdInput(name="user", role="user"), field_path="inputs.0")
    feature.fit(np.array(["10", "2", "2", "7", "10", "2", None], dtype=object))
    # Most frequent first; ties by the numeric id (7 before 10 would be text order: '10' < '7').
    assert feature.vocabulary_ == ["<unknown>", "2", "7", "10"] or feature.vocabulary_ == ["<unknown>", "2", "10", "7"]
    assert feature.vocabulary_[:2] == ["<unknown>", "2"]
    codes = feature.transform(np.array(["2", "new-user", None, 10], dtype=object))
    assert codes.tolist() == [1, 0, 0, feature.vocabulary_.index("10")]  # unseen and missing: bucket 0
    assert feature.report == {"unknown_or_missing": 2}
    restored = IdFeature(IdInput(name="user", role="user"), field_path="inputs.0").load_state(feature.state())
    assert restored.signature() == feature.signature()
    assert restored.transform(np.array(["7", "zzz"], dtype=object)).tolist() == [feature.vocabulary_.index("7"), 0]
    assert feature.signature()["cardinality"] == 4 and feature.signature()["role"] == "user"


def test_id_ties_sort_numerically():
    feature = IdFeature(IdInput(name="item", role="item"), field_path="inputs.1")
    feature.fit(np.array(["10", "9", "100", "9"], dtype=object))
    assert feature.vocabulary_ == ["<unknown>", "9", "10", "100"]


# ---------------------------------------------------------------- the negative sampler
def _sampler(kind="uniform"):
    n_users, n_items = 50, 30
    rng = np.random.default_rng(0)
    users, items = [], []
    for u in range(1, n_users):
        chosen = rng.choice(np.arange(1, n_items), size=rng.integers(1, 25), replace=False)  # up to 24 of 29 items
        users += [u] * len(chosen)
        items += chosen.tolist()
    users, items = torch.tensor(users), torch.tensor(items)
    sampler = NegativeSampler(n_items, kind=kind, seed=3)
    sampler.set_data(users, items, torch.bincount(items, minlength=n_items).float())
    return sampler, users, items


@pytest.mark.parametrize("kind", ["uniform", "popularity"])
def test_sampler_never_draws_a_positive_or_the_unknown_item(kind):
    sampler, users, items = _sampler(kind)
    positives = set(zip(users.tolist(), items.tolist()))
    batch = torch.arange(1, 50).repeat(20)
    negatives = sampler.sample(batch, 8)
    assert negatives.shape == (len(batch), 8)
    drawn = set(zip(batch.repeat_interleave(8).tolist(), negatives.flatten().tolist()))
    assert not drawn & positives
    assert int(negatives.min()) >= 1


def test_popularity_sampler_prefers_popular_items():
    sampler, users, items = _sampler("popularity")
    counts = torch.bincount(items, minlength=30).float()
    draws = torch.bincount(sampler._draw(20000), minlength=30).float()
    top, bottom = counts[1:].argmax() + 1, counts[1:].argmin() + 1
    assert draws[top] > draws[bottom]
    assert math.isclose(float(sampler.log_q(torch.tensor([top])).exp()), float(sampler.probs[top]), rel_tol=1e-5)


def test_sampler_resumes_identically():
    sampler, _, _ = _sampler()
    users = torch.arange(1, 50)
    sampler.sample(users, 4)
    state = sampler.rng_state()
    first = sampler.sample(users, 4)
    other, _, _ = _sampler()
    other.load_rng_state(state)
    assert torch.equal(other.sample(users, 4), first)


def test_sampler_refuses_a_user_with_every_item():
    sampler = NegativeSampler(4)
    with pytest.raises(Exception, match="every item"):
        sampler.set_data(torch.tensor([1, 1, 1]), torch.tensor([1, 2, 3]), torch.ones(4))


# ---------------------------------------------------------------- metrics, by hand
def test_ranking_metrics_match_a_hand_computed_example():
    # Three users; held-out items ranked 0 (first), 3 (fourth) and 12 (a miss at 10).
    rank = torch.tensor([0.0, 3.0, 12.0])
    m = metrics_from_ranks(rank, k=10, recall_k=50)
    assert m["hr@10"] == pytest.approx(2 / 3)
    assert m["recall@10"] == pytest.approx(2 / 3)  # one relevant item per user: recall@K = HR@K
    assert m["recall@50"] == pytest.approx(1.0)
    assert m["ndcg@10"] == pytest.approx((1 / math.log2(2) + 1 / math.log2(5) + 0) / 3)  # (1 + 0.4307) / 3
    assert m["mrr"] == pytest.approx((1 + 1 / 4 + 1 / 13) / 3)


def test_coverage_counts_distinct_items_of_the_catalogue():
    top = torch.tensor([[1, 2, 3], [2, 3, 4]])
    assert coverage(top, n_items=11) == pytest.approx(4 / 10)  # items 1..10; 0 is the unknown bucket


def test_sampled_ranks_count_higher_negatives():
    scores = torch.tensor([[0.5, 0.9, 0.1, 0.7], [2.0, 1.0, 0.0, -1.0]])
    assert sampled_ranks(scores).tolist() == [2, 0]


def test_most_popular_baseline_by_hand():
    popularity = torch.tensor([0.0, 50, 40, 30, 20, 10])  # item 0: unknown bucket
    seen = torch.zeros(2, 6, dtype=torch.bool)
    seen[0, 1] = True  # user 0 saw the most popular item
    users, items = torch.tensor([0, 1]), torch.tensor([3, 5])
    m = most_popular_full(popularity, users, items, lambda u: seen[u].clone(), k=2, recall_k=4)
    # user 0: item 1 excluded, ranking 2, 3, ... -> item 3 at rank 1 (hit@2); user 1: item 5 at rank 4 (miss)
    assert m["hr@2"] == pytest.approx(0.5)
    assert m["ndcg@2"] == pytest.approx((1 / math.log2(3)) / 2)
    assert m["mrr"] == pytest.approx((1 / 2 + 1 / 5) / 2)
    assert m["coverage@2"] == pytest.approx(3 / 5)  # {2, 3} and {1, 2}


# ---------------------------------------------------------------- interaction tables
def test_duplicate_pairs_policy_counted_or_refused(tmp_path):
    from dlforge.data import prepare

    paths = write_interactions(tmp_path, duplicates=3)
    recipe = load_recipe(ranking_recipe(paths, side=False))
    prepared = prepare(recipe)
    assert any("3 duplicate pairs dropped last" in note for note in prepared.report["notes"])
    rating = ranking_recipe(paths, side=False)
    rating["inputs"][1]["duplicates"] = "mean"
    rating["outputs"] = [{"name": "rating", "type": "number", "normalize": False}]
    rating["combiner"] = {"name": "mf", "dim": 4}
    averaged = prepare(load_recipe(rating))
    assert sum(len(s) for s in averaged.splits.values()) == 240  # 30 users x 8 items: the 3 repeats folded in
    ratings = torch.cat([s.y["rating"] for s in averaged.splits.values()])
    assert bool((ratings % 1 != 0).any())  # pairs rated (5, 2) and (3, 2) became 3.5 and 2.5
    strict = ranking_recipe(paths, side=False)
    strict["inputs"][1]["duplicates"] = "error"
    with pytest.raises(DataError, match="3 repeated"):
        prepare(load_recipe(strict))


def test_time_split_needs_a_time_on_every_row(tmp_path):
    import pandas as pd

    from dlforge.data import prepare

    paths = write_interactions(tmp_path)
    frame = pd.read_csv(paths["interactions"])
    frame.loc[[3, 7], "ts"] = None
    frame.to_csv(paths["interactions"], index=False)
    with pytest.raises(DataError, match="2 missing or unreadable") as err:
        prepare(load_recipe(ranking_recipe(paths, side=False)))
    assert err.value.where == "data.split.leave_last_out.time"


def test_leave_last_out_puts_each_users_last_item_in_test(tmp_path):
    from dlforge.data import prepare

    paths = write_interactions(tmp_path, users=10, per_user=5)
    prepared = prepare(load_recipe(ranking_recipe(paths, side=False)))
    assert prepared.report["rows"] == {"train": 30, "val": 10, "test": 10}


def test_recommendation_recipe_checks():
    bad = {"data": {"source": "x.csv"}, "inputs": [{"name": "user", "type": "id", "role": "user"}],
           "outputs": [{"name": "rating", "type": "interaction"}], "combiner": {"name": "concat"}}
    with pytest.raises(RecipeError) as err:
        load_recipe(bad)
    text = str(err.value)
    assert "role user and one with role item" in text and "recommender combiner" in text


# ---------------------------------------------------------------- the models
@pytest.mark.parametrize("combiner,loss", [
    ({"name": "mf", "dim": 4}, "softmax"),
    # SASRec blocks (with dropout: the global generator is checkpointed too) under the full softmax
    pytest.param({"name": "mf", "dim": 4, "history": 3, "history_layers": 1, "history_heads": 2}, "full_softmax",
                 marks=pytest.mark.slow),
    pytest.param({"name": "neumf", "dim": 4, "mlp_dim": 4, "layers": [8]}, "softmax", marks=pytest.mark.slow)])
def test_models_train_rank_and_resume_exactly(tmp_path, combiner, loss):
    import dlforge
    from dlforge.training.checkpoint import load_checkpoint

    paths = write_interactions(tmp_path)
    recipe = ranking_recipe(paths, side=False, combiner=combiner, loss=loss, sampler="popularity")
    recipe["training"]["epochs"] = 2
    full = dlforge.train(recipe, out=tmp_path / "full", progress=False)
    test = full.metrics["test"]
    assert set(test) >= {"hr@10", "ndcg@10", "recall@10", "recall@50", "mrr", "coverage@10"}
    assert 0 <= test["ndcg@10"] <= test["hr@10"] <= test["recall@50"] <= 1
    assert full.metrics["baseline"]["most_popular"]["hr@10"] >= 0
    assert "Most popular (training counts" in (tmp_path / "full" / "report.html").read_text()
    # One epoch, then a resume for the second: the sampler's state is in the checkpoint, so the weights match.
    recipe["training"]["epochs"] = 1
    dlforge.train(recipe, out=tmp_path / "half", progress=False)
    state = load_checkpoint(tmp_path / "half")
    assert "model_rng" in state
    recipe["training"]["epochs"] = 2
    import yaml

    (tmp_path / "half" / "recipe.yaml").write_text(yaml.safe_dump(load_recipe(recipe).model_dump(mode="json")))
    (tmp_path / "half" / "checkpoint" / "meta.json").write_text('{"base_dir": "."}')
    from dlforge.training.checkpoint import recipe_digest

    state["recipe_sha256"], state["finished"] = recipe_digest(load_recipe(recipe)), False
    torch.save(state, tmp_path / "half" / "checkpoint" / "state.pt")
    resumed = dlforge.train(resume=tmp_path / "half", progress=False)
    assert resumed.history[-1]["train.loss"] == pytest.approx(full.history[-1]["train.loss"], rel=1e-6)
    assert resumed.metrics["test"]["hr@10"] == pytest.approx(test["hr@10"])


def test_losses_by_hand():
    """BPR, BCE and sampled softmax with the logQ correction on one row: positive score 2, negatives 0 and 1."""
    import torch.nn.functional as F

    from dlforge.models.recommend import RecommenderModel

    model = RecommenderModel.__new__(RecommenderModel)
    torch.nn.Module.__init__(model)
    model.output, model.ranking, model.negatives = "r", True, 2
    model.scorer = type("NoPenalty", (torch.nn.Module,), {"penalty": lambda self: None})()
    scores = {"r": torch.tensor([[2.0, 0.0, 1.0]])}
    model.loss_name, model._log_q = "bpr", None
    bpr = -(F.logsigmoid(torch.tensor(2.0)) + F.logsigmoid(torch.tensor(1.0))) / 2
    assert float(model.loss(scores, {})) == pytest.approx(float(bpr))
    model.loss_name = "bce"
    bce = -(F.logsigmoid(torch.tensor(2.0)) + F.logsigmoid(torch.tensor(-0.0)) + F.logsigmoid(torch.tensor(-1.0))) / 3
    assert float(model.loss(scores, {})) == pytest.approx(float(bce))
    model.loss_name = "softmax"
    model._log_q = torch.log(torch.tensor([[0.5, 0.25, 0.25]]))  # the corrected logits are s - log q
    corrected = torch.tensor([2.0, 0.0, 1.0]) - model._log_q[0]
    assert float(model.loss(scores, {})) == pytest.approx(float(-torch.log_softmax(corrected, 0)[0]))
