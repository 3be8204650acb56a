"""Fairness by group, group thresholds and temperature scaling: values against fairlearn and by hand, the
thresholds stored in model.json and applied by predict and serve, and each bad input."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

import dlforge
from dlforge.core.errors import ArtifactError, RecipeError
from dlforge.evaluation.calibration import class_probabilities, ece, fit_temperature, nll, reliability
from dlforge.evaluation.fairness import fit_thresholds, group_metrics
from dlforge.evaluation.postprocess import positive_rate, threshold_predictions

fairlearn = pytest.importorskip("fairlearn")


def toy(n=600, seed=0):
    rng = np.random.default_rng(seed)
    groups = rng.choice(["f", "m"], size=n, p=[0.4, 0.6])
    scores = np.clip(rng.random(n) * 0.8 + (groups == "m") * 0.2, 0, 1)
    y_true = (rng.random(n) < scores).astype(int)
    return groups, scores, y_true


def test_per_group_metrics_match_fairlearn_and_hand_counts():
    groups, scores, y_true = toy()
    y_pred = (scores >= 0.5).astype(int)
    probs = np.stack([1 - scores, scores], axis=1)
    got = group_metrics(y_true, y_pred, probs, groups, binary=True, bins=10)
    for g in ("f", "m"):
        m = groups == g
        t, p = y_true[m], y_pred[m]
        row = got["groups"][g]
        assert row["count"] == m.sum()
        assert row["accuracy"] == pytest.approx((t == p).mean(), abs=1e-6)
        assert row["selection_rate"] == pytest.approx(p.mean(), abs=1e-6)
        assert row["tpr"] == pytest.approx(p[t == 1].mean(), abs=1e-6)
        assert row["fpr"] == pytest.approx(p[t == 0].mean(), abs=1e-6)
        assert row["ece"] == pytest.approx(ece(torch.tensor(probs[m]), torch.tensor(t), 10), abs=1e-6)
    from fairlearn.metrics import demographic_parity_difference, equalized_odds_ratio

    rates = [y_pred[groups == g].mean() for g in ("f", "m")]
    assert got["disparities"]["demographic_parity_difference"] == pytest.approx(abs(rates[0] - rates[1]), abs=1e-6)
    assert got["disparities"]["demographic_parity_difference"] == pytest.approx(
        demographic_parity_difference(y_true, y_pred, sensitive_features=groups), abs=1e-6)
    assert got["disparities"]["equalized_odds_ratio"] == pytest.approx(
        equalized_odds_ratio(y_true, y_pred, sensitive_features=groups), abs=1e-6)


def test_ece_by_hand():
    # two bins used: 0.9-confidence rows (3 of 4 right) and 0.6-confidence rows (1 of 2 right)
    probs = torch.tensor([[0.9, 0.1]] * 4 + [[0.4, 0.6]] * 2)
    target = torch.tensor([0, 0, 0, 1, 1, 0])
    expected = (4 / 6) * abs(0.75 - 0.9) + (2 / 6) * abs(0.5 - 0.6)
    assert ece(probs, target, bins=10) == pytest.approx(expected, abs=1e-6)
    bins = reliability(probs, target, bins=10)
    assert sum(bins["count"]) == 6 and bins["accuracy"][9] == pytest.approx(0.75)


def test_exported_thresholds_reproduce_fairlearn():
    from fairlearn.postprocessing import ThresholdOptimizer  # noqa: F401 - the library whose output we copy

    groups, scores, y_true = toy(2000)
    record = {"groups": fit_thresholds(scores, y_true, groups, constraint="demographic_parity"), "seed": 0}
    json.dumps(record)  # plain JSON, no infinities
    q = positive_rate(scores, groups, record, fallback=0.5)
    # demographic parity on the fitted rows: expected selection rates equal across groups
    assert q[groups == "f"].mean() == pytest.approx(q[groups == "m"].mean(), abs=0.02)
    before = [(scores[groups == g] >= 0.5).mean() for g in ("f", "m")]
    assert abs(before[0] - before[1]) > 0.1  # there was a gap to close
    drawn = threshold_predictions(scores, groups, record, fallback=0.5)
    assert set(np.unique(drawn)) <= {0, 1}
    # deterministic per row: a row alone gets the answer it gets in the batch
    assert all(threshold_predictions(scores[i:i + 1], groups[i:i + 1], record, 0.5)[0] == drawn[i] for i in range(50))
    # an unseen group keeps the plain threshold
    assert positive_rate(np.array([0.7, 0.3]), np.array(["x", "x"]), record, 0.5).tolist() == [1.0, 0.0]


def test_temperature_lowers_nll_of_an_overconfident_model():
    torch.manual_seed(0)
    n = 2000
    true_logits = torch.randn(n, 3) * 1.5
    target = torch.distributions.Categorical(logits=true_logits).sample()
    overconfident = true_logits * 4  # the right ranking, four times too sure
    t = fit_temperature(overconfident, target, "category")
    assert t == pytest.approx(4.0, rel=0.15)
    assert nll(overconfident, target, "category", t) < nll(overconfident, target, "category") - 0.2
    before = ece(class_probabilities(overconfident, "category"), target)
    after = ece(class_probabilities(overconfident / t, "category"), target)
    assert after < before / 2
    binary_logits = torch.randn(n, 1)
    y = torch.bernoulli(torch.sigmoid(binary_logits)).reshape(-1)
    assert fit_temperature(binary_logits * 3, y, "binary") == pytest.approx(3.0, rel=0.2)


# -- through training, predict and serve ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fair_csv(tmp_path_factory):
    rng = np.random.default_rng(1)
    n = 600
    group = rng.choice(["a", "b"], size=n, p=[0.35, 0.65])
    x1 = rng.normal(size=n) + (group == "b") * 0.8
    x2 = rng.normal(size=n)
    y = np.where(x1 + 0.5 * x2 + rng.normal(scale=0.5, size=n) > 0.6, "yes", "no")
    path = tmp_path_factory.mktemp("fair") / "fair.csv"
    pd.DataFrame({"x1": x1, "x2": x2, "group": group, "region": rng.choice(["n", "s"], size=n), "y": y}).to_csv(
        path, index=False)
    return path


def fair_recipe(csv, **evaluation) -> dict:
    return {"name": "fair", "data": {"source": str(csv), "split": {"val": 0.25, "test": 0.25, "seed": 0}},
            "inputs": [{"name": "x1", "type": "number"}, {"name": "x2", "type": "number"},
                       {"name": "group", "type": "category"}],
            "outputs": [{"name": "y", "type": "binary"}],
            "training": {"epochs": 4, "batch_size": 64, "optimizer": {"name": "adam", "lr": 0.01}, "baseline": False},
            "evaluation": evaluation}


@pytest.fixture(scope="module")
def fair_run(fair_csv, tmp_path_factory):
    out = tmp_path_factory.mktemp("fair_run") / "run"
    recipe = fair_recipe(fair_csv, sensitive=["group", "region"], mitigate={"by": ["group"]},
                         calibrate="temperature")
    return dlforge.train(recipe, out=out, progress=False)


@pytest.mark.slow  # the module's training run: seconds on a loaded machine
def test_metrics_json_has_groups_disparities_and_before_after(fair_run):
    fair = fair_run.metrics["fairness"]
    assert set(fair["before"]) == {"group", "region", "group × region"}
    assert set(fair["before"]["group"]["groups"]) == {"a", "b"}
    assert set(fair["after"]["group"]["disparities"]) == {"demographic_parity_difference", "demographic_parity_ratio",
                                                          "equalized_odds_difference", "equalized_odds_ratio"}
    assert fair["mitigation"]["by"] == ["group"] and set(fair["thresholds"]) == {"a", "b"}
    counts = sum(g["count"] for g in fair["before"]["group"]["groups"].values())
    assert counts == fair_run.metrics["data"]["rows"]["test"]
    on_disk = json.loads((fair_run.run_dir / "metrics.json").read_text())
    assert on_disk["fairness"]["thresholds"] == fair["thresholds"]
    cal = fair_run.metrics["calibration"]
    assert cal["temperature"] > 0 and cal["after"]["nll"] <= cal["nll"] + 1e-3


@pytest.mark.slow  # the module's training run: seconds on a loaded machine
def test_thresholds_and_temperature_are_applied_at_predict_and_serve(fair_run, fair_csv):
    from dlforge.serve.runtime import ModelRuntime, Records

    meta = json.loads((fair_run.run_dir / "model.json").read_text())
    post = meta["postprocess"]
    assert set(post) == {"temperature", "thresholds"} and post["thresholds"]["by"] == ["group"]
    predictor = dlforge.load(fair_run.run_dir)
    rows = pd.read_csv(fair_csv).drop(columns=["y"]).head(200)
    proba = predictor.predict_proba(rows)[:, 1]
    # predict_proba is the temperature-scaled probability
    raw = predictor.runtime.run(predictor.encode_inputs(rows))["y"].reshape(-1)
    assert np.allclose(proba, torch.sigmoid(raw / post["temperature"]["y"]).numpy(), atol=1e-6)
    labels = predictor.predict(rows)
    groups = rows["group"].to_numpy(dtype=object)
    expected = threshold_predictions(proba, groups, post["thresholds"], fallback=0.5)
    assert (labels == np.where(expected == 1, "yes", "no")).all()
    plain = np.where(proba >= 0.5, "yes", "no")
    assert (labels != plain).any()  # the thresholds changed some decisions
    runtime = ModelRuntime(predictor)
    served = runtime.run([Records({c: rows[c].tolist() for c in ("x1", "x2", "group")}, len(rows))])[0]
    assert [r["label"] for r in served] == labels.tolist()
    assert np.allclose([r["top_k"][0]["probability"] if r["top_k"][0]["label"] == "yes" else 1 - r["top_k"][0]
                        ["probability"] for r in served], proba, atol=1e-5)


@pytest.mark.slow  # the module's training run: seconds on a loaded machine
def test_edited_thresholds_are_refused(fair_run, tmp_path):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(fair_run.run_dir, copy)
    meta = json.loads((copy / "model.json").read_text())
    meta["postprocess"]["thresholds"]["groups"]["a"]["t0"] = 0.0
    (copy / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="changed after it was saved"):
        dlforge.load(copy)


# -- bad input ---------------------------------------------------------------------------------------------------
def test_sensitive_column_absent_from_data_names_the_columns(fair_csv, tmp_path):
    with pytest.raises(RecipeError) as err:
        dlforge.train(fair_recipe(fair_csv, sensitive=["gender"]), out=tmp_path / "r", progress=False)
    text = err.value.render()
    assert "evaluation.sensitive: column 'gender' is not in the data" in text
    assert "x1, x2, group, region, y" in text
    assert not (tmp_path / "r" / "model.json").exists()


@pytest.mark.parametrize("evaluation, expected", [
    ({"mitigate": "threshold_optimizer"}, "needs evaluation.sensitive"),
    ({"sensitive": ["region"], "mitigate": "threshold_optimizer"}, "'region' is not a model input"),
    ({"sensitive": ["x1"], "mitigate": "threshold_optimizer"}, "'x1' is a number input"),
    ({"sensitive": ["group"], "mitigate": {"by": ["region"]}}, "'region' is not in evaluation.sensitive"),
    ({"sensitive": ["y"]}, "'y' is an output"),
    ({"sensitive": ["group", "group"]}, "'group' is listed twice"),
    ({"mitigate": "reweighing"}, "evaluation.mitigate"),
])
def test_bad_evaluation_sections(fair_csv, evaluation, expected):
    from dlforge.recipe.io import validate

    with pytest.raises(RecipeError, match=expected):
        validate(fair_recipe(fair_csv, **evaluation))


def test_fairness_and_calibration_need_a_class_output(fair_csv):
    from dlforge.recipe.io import validate

    recipe = fair_recipe(fair_csv, sensitive=["group"], calibrate="temperature")
    recipe["outputs"] = [{"name": "x2", "type": "number"}]
    recipe["inputs"] = recipe["inputs"][:1] + recipe["inputs"][2:]
    with pytest.raises(RecipeError, match="needs a binary or category first output"):
        validate(recipe)
    recipe["evaluation"] = {"sensitive": ["group"], "mitigate": "threshold_optimizer"}
    recipe["outputs"] = [{"name": "y", "type": "category"}]
    with pytest.raises(RecipeError, match="group thresholds need a binary first output"):
        validate(recipe)


def test_category_outputs_get_accuracy_and_ece_per_group_without_disparities():
    rng = np.random.default_rng(3)
    groups = rng.choice(["u", "v", "w"], size=300)
    probs = rng.dirichlet([1, 1, 1], size=300)
    y_true = rng.integers(0, 3, size=300)
    y_pred = probs.argmax(1)
    got = group_metrics(y_true, y_pred, probs, groups, binary=False)
    assert set(got["groups"]) == {"u", "v", "w"} and "disparities" not in got
    m = groups == "v"
    assert got["groups"]["v"]["accuracy"] == pytest.approx((y_true[m] == y_pred[m]).mean(), abs=1e-6)
    assert set(got["groups"]["v"]) == {"count", "accuracy", "ece"}
