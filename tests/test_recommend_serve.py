"""Recommending from a trained run: the Python API (cold start said), the CLI (exit 2 on bad input) and
POST /v1/recommend (200, batched, 422)."""

from __future__ import annotations

import json

import pytest

from recommend_data import ranking_recipe, write_interactions
from serve.conftest import app_client


@pytest.fixture(scope="module")
def two_tower_run(tmp_path_factory):
    import dlforge

    folder = tmp_path_factory.mktemp("recommend")
    paths = write_interactions(folder / "data")
    recipe = ranking_recipe(paths)  # two_tower with user group and item genre side features
    recipe["training"]["epochs"] = 8
    return dlforge.train(recipe, out=folder / "run", progress=False).run_dir


@pytest.fixture(scope="module")
def mf_run(tmp_path_factory):
    import dlforge

    folder = tmp_path_factory.mktemp("recommend_mf")
    paths = write_interactions(folder / "data")
    return dlforge.train(ranking_recipe(paths, side=False), out=folder / "run", progress=False).run_dir


def test_recommend_known_user_excludes_seen_items(two_tower_run):
    import dlforge
    import pandas as pd

    predictor = dlforge.load(two_tower_run)
    seen = set(pd.read_csv(two_tower_run.parent / "data" / "interactions.csv").query("user == 'u0'")["item"])
    answer = predictor.recommend("u0", k=5)
    assert answer["source"] == "model" and len(answer["items"]) == 5
    assert not seen & {entry["item"] for entry in answer["items"]}
    scores = [entry["score"] for entry in answer["items"]]
    assert scores == sorted(scores, reverse=True)
    everything = predictor.recommend("u0", k=20, exclude_seen=False)
    assert len(everything["items"]) == 20  # the whole catalogue of 20 items, seen ones included


def test_cold_user_is_scored_from_side_features(two_tower_run):
    import dlforge

    predictor = dlforge.load(two_tower_run)
    cold = predictor.recommend("a-new-user", k=5, features={"group": "a"})
    assert cold["source"] == "side_features"
    # Group a likes even items: the side feature alone points the new user at them.
    evens = sum(int(entry["item"][1:]) % 2 == 0 for entry in cold["items"])
    assert evens >= 4
    assert predictor.recommend("another-new-user", k=3)["source"] == "popularity"  # no features sent


def test_cold_user_without_side_features_gets_popularity(mf_run):
    import dlforge

    answer = dlforge.load(mf_run).recommend("nobody", k=3)
    assert answer["source"] == "popularity" and len(answer["items"]) == 3
    similar = dlforge.load(mf_run).recommend(item="i2", k=3)
    assert "i2" not in {e["item"] for e in similar["items"]} and len(similar["items"]) == 3


def test_cli_recommend_and_bad_input_exit_2(cli, mf_run, tmp_path):
    ok = cli("recommend", mf_run, "--user", "u1", "-k", "3")
    assert ok.returncode == 0 and "user u1: top 3 by the model" in ok.stdout
    assert len([line for line in ok.stdout.splitlines() if line.strip()[:2].rstrip(".").isdigit()]) == 3
    evaluated = cli("evaluate", mf_run)
    assert evaluated.returncode == 0 and "hr@10" in evaluated.stdout and "coverage@10" in evaluated.stdout
    as_json = cli("recommend", mf_run, "--user", "nobody", "-k", "2", "--json")
    assert json.loads(as_json.stdout)["source"] == "popularity"
    for args, message in (((tmp_path / "missing", "--user", "1"), "no run at"),
                          ((mf_run, "--user", "u1", "-k", "0"), "-k must be from 1"),
                          ((mf_run, "--item", "never-seen"), "never seen in training"),
                          ((mf_run, "--user", "u1", "--item", "i1"), "not both"),
                          ((mf_run, "--user", "u1", "--feature", "age=3"), "not user side features")):
        bad = cli("recommend", *args)
        assert bad.returncode == 2 and message in bad.stderr, (args, bad.stderr)


def test_serve_recommend_200_batched_and_422(two_tower_run):
    with app_client(two_tower_run) as client:
        one = client.post("/v1/recommend", json={"user": "u0", "k": 4})
        assert one.status_code == 200, one.text
        body = one.json()
        assert body["source"] == "model" and len(body["items"]) == 4 and body["model"] == "tiny-recommender"
        many = client.post("/v1/recommend", json={"queries": [
            {"user": "u1", "k": 2}, {"user": "new", "features": {"group": "b"}, "k": 3}, {"item": "i4", "k": 2}]})
        assert many.status_code == 200, many.text
        answers = many.json()["recommendations"]
        assert [a["source"] for a in answers] == ["model", "side_features", "model"]
        assert [len(a["items"]) for a in answers] == [2, 3, 2]
        for bad in ({"user": "u0", "k": 0}, {"user": "u0", "k": "3"}, {"k": 3}, {"user": "u0", "item": "i1"},
                    {"user": "u0", "extra": 1}, {"queries": []}, {"user": "x", "features": {"nope": 1}},
                    {"item": "never-seen"}):
            response = client.post("/v1/recommend", json=bad)
            assert response.status_code == 422, (bad, response.text)
            assert "detail" in response.json()


def test_serve_recommend_is_404_for_other_models(digits_run):
    with app_client(digits_run) as client:
        assert client.post("/v1/recommend", json={"user": "1"}).status_code == 404
