"""The strong tabular default (issue #12 item 3) and the scikit-learn baseline beside every tabular run (item 4):
number scalings and embeddings, a log target undone everywhere, the TabM-mini ensemble, what `init` writes,
the best-epoch warning, and the baseline block in metrics.json, the summary and the report."""

import json
import sys

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

import dlforge
from dlforge.core.errors import DataError
from dlforge.data import prepare
from dlforge.data.features.number import NumberFeature, NumberTarget, quantile_normal, skewness
from dlforge.evaluation import baseline as baseline_module
from dlforge.models.number_embeddings import PeriodicEmbedding, PiecewiseLinearEmbedding
from dlforge.recipe import NumberInput, NumberOutput
from dlforge.recipe.io import load_recipe
from dlforge.workflows.init import init
from conftest import main_ok, tabular_recipe




def _number(values, **config) -> NumberFeature:
    return NumberFeature(NumberInput(name="x", **config), field_path="inputs.0").fit(np.asarray(values, dtype=float))


# ---------------------------------------------------------------- number scalings
def test_quantile_scaling_turns_a_skewed_column_into_a_bell_and_survives_json():
    values = np.random.default_rng(0).lognormal(0, 2, size=4000)  # skewness in the tens
    feature = _number(values, preprocessing={"normalization": "quantile"})
    z = feature.transform(values)[:, 0].numpy()
    assert abs(z.mean()) < 0.05 and abs(z.std() - 1) < 0.05 and abs(skewness(z)) < 0.1
    assert np.all(np.diff(z[np.argsort(values)]) >= -1e-6)  # order is kept
    again = NumberFeature(feature.config, field_path="inputs.0").load_state(json.loads(json.dumps(feature.state())))
    assert torch.equal(again.transform(values), feature.transform(values))


def test_quantile_ties_map_to_their_middle_rank_and_extremes_are_bounded():
    q = np.array([0.0, 0.0, 0.0, 1.0, 2.0])  # a value repeated over several quantiles (a column mostly 0)
    assert quantile_normal(np.array([0.0]), q)[0] == pytest.approx(-0.674, abs=0.01)  # rank 1/4 of [0, 0.5]
    assert abs(quantile_normal(np.array([-1e9, 1e9]), q)).max() == pytest.approx(5.2, abs=0.01)


def test_robust_scaling_centres_on_the_median_and_soft_clips_outliers():
    values = np.concatenate([np.random.default_rng(1).normal(10, 2, 999), [1e6]])
    z = _number(values, preprocessing={"normalization": "robust"}).transform(values)[:, 0].numpy()
    # The bulk: about unit scale (one std maps to 1/sqrt(1 + 1/9) = 0.95 under the soft clip).
    assert abs(np.median(z)) < 0.05 and 0.85 < np.percentile(z, 84) < 1.05
    assert 2.9 < z[-1] <= 3.0  # the outlier: bounded by the soft clip, still the largest
    assert z.argmax() == len(z) - 1


# ---------------------------------------------------------------- embeddings
def test_piecewise_linear_bins_and_encoding():
    feature = _number(np.arange(100.0), preprocessing={"normalization": "none"},
                      embedding={"name": "piecewise_linear", "bins": 4, "dim": 3})
    edges = feature.signature()["embedding"]["edges"]
    assert edges == pytest.approx([0, 24.75, 49.5, 74.25, 99])
    few = _number([1.0, 2.0, 3.0] * 10, embedding={"name": "piecewise_linear", "bins": 16})
    assert len(few.signature()["embedding"]["edges"]) == 3  # three distinct values: two bins, not sixteen
    emb = PiecewiseLinearEmbedding([edges, [0.0, 1.0]], dim=3)
    with torch.no_grad():
        emb.linear.weight[0].copy_(torch.eye(4, 3))
        emb.linear.bias.zero_()
        out = emb(torch.tensor([[37.125, 0.5], [-10.0, 0.5]]))
    assert out.shape == (2, 6)
    # 37.125 is past bin 0 (1), half-way through bin 1 (0.5), before bin 2 (0).
    assert out[0, :3].tolist() == pytest.approx([1.0, 0.5, 0.0])
    assert out[1, :3].tolist() == pytest.approx([0.0, 0.0, 0.0])  # below the first edge: negative, then ReLU


def test_periodic_embedding_shape_and_gradients():
    emb = PeriodicEmbedding(columns=3, frequencies=4, sigma=1.0, dim=5)
    out = emb(torch.randn(8, 3))
    assert out.shape == (8, 15) and emb.output_dim == 15
    out.sum().backward()
    assert emb.frequencies.grad is not None and emb.frequencies.grad.abs().sum() > 0


def _embedded(csv, name="periodic", **training):
    recipe = tabular_recipe(csv)
    for entry in recipe["inputs"]:
        if entry["type"] == "number":
            entry["preprocessing"] = {"normalization": "quantile"}
            entry["embedding"] = {"name": name, "bins": 4, "frequencies": 4, "dim": 4}
    recipe["training"].update({"baseline": False, **training})
    return recipe


@pytest.mark.parametrize("name", ["piecewise_linear", "periodic"])
def test_embedded_numbers_train_save_and_reload_identically(tiny_csv, tmp_path, name):
    result = dlforge.train(_embedded(tiny_csv, name), out=tmp_path / "run", progress=False)
    meta = json.loads((result.run_dir / "model.json").read_text())
    assert meta["signature"]["inputs"]["x2"]["embedding"]["name"] == name
    frame = pd.read_csv(tiny_csv).head(20)
    predictor = dlforge.load(result.run_dir)
    again = dlforge.load(result.run_dir)
    assert np.array_equal(predictor.predict_proba(frame), again.predict_proba(frame))
    assert dlforge.evaluate(result.run_dir)["roc_auc"] == pytest.approx(result.metrics["test"]["roc_auc"], abs=1e-6)


# ---------------------------------------------------------------- log target
def test_log_target_round_trips_and_refuses_negative_values():
    y = np.array([0.0, 1.0, 10.0, 1000.0, 1e5])
    target = NumberTarget(NumberOutput(name="price", transform="log"), field_path="outputs.0").fit(y)
    encoded = target.transform(y)
    assert encoded.abs().max() < 2  # log space, standardised: the 1e5 is not an outlier there
    assert target.decode(encoded.unsqueeze(1)) == pytest.approx(y, rel=1e-5, abs=1e-5)
    restored = NumberTarget(target.config, field_path="outputs.0").load_state(json.loads(json.dumps(target.state())))
    assert restored.state()["transform"] == "log"
    assert restored.decode(encoded.unsqueeze(1)) == pytest.approx(y, rel=1e-5, abs=1e-5)
    with pytest.raises(DataError, match=r"negative values \[-3.0\] \(rows 1\).*transform: log"):
        target.check(np.array([1.0, -3.0]))


def test_log_target_is_undone_in_predictions_and_metrics(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=300)
    frame = pd.DataFrame({"x": x, "price": np.exp(2 + x + rng.normal(scale=0.1, size=300))})  # 1 to 1,000s
    frame.to_csv(tmp_path / "p.csv", index=False)
    recipe = {"name": "price", "data": {"source": str(tmp_path / "p.csv"), "split": {"val": 0.15, "test": 0.15}},
              "inputs": [{"name": "x", "type": "number"}],
              "outputs": [{"name": "price", "type": "number", "transform": "log"}],
              "combiner": {"name": "concat", "layers": [32]},
              "training": {"epochs": 40, "batch_size": 32, "optimizer": {"name": "adam", "lr": 0.01}, "baseline": False}}
    result = dlforge.train(recipe, out=tmp_path / "run", progress=False)
    predicted = dlforge.load(result.run_dir).predict(frame.head(50))
    assert np.corrcoef(np.log(predicted.astype(float)), np.log(frame.price[:50]))[0, 1] > 0.95  # user units
    assert result.metrics["test"]["r2"] > 0.8  # scored in dollars, not in log units
    assert dlforge.evaluate(result.run_dir)["rmse"] == pytest.approx(result.metrics["test"]["rmse"], rel=1e-4)


# ---------------------------------------------------------------- TabM-mini ensemble
def test_ensemble_trains_members_apart_and_predicts_their_mean(tiny_csv, tmp_path):
    recipe = _embedded(tiny_csv)
    recipe["combiner"] = {"name": "concat", "layers": [16], "ensemble": 4}
    result = dlforge.train(recipe, out=tmp_path / "run", progress=False)
    model = dlforge.load(result.run_dir).model
    assert model.combiner.adapter.shape[0] == 4
    batch = {name: t[:5] for name, t in prepare(load_recipe(recipe)).splits["test"].x.items()}
    with torch.no_grad():
        model.train()
        members = model(batch)["target"]
        model.eval()
        combined = model(batch)["target"]
    assert members.shape == (5, 4, 1)
    assert combined.shape == (5, 1)
    assert torch.sigmoid(combined).squeeze(1) == pytest.approx(torch.sigmoid(members).mean(1).squeeze(1), abs=1e-5)


def test_ensemble_with_batch_norm_is_a_recipe_error(tiny_csv):
    from dlforge.core.errors import RecipeError

    recipe = tabular_recipe(tiny_csv, combiner={"name": "concat", "layers": [8], "ensemble": 2, "batch_norm": True})
    with pytest.raises(RecipeError, match="batch_norm"):
        load_recipe(recipe)


# ---------------------------------------------------------------- cross-fit ensemble
def _cross_fit_recipe(csv, folds=3):
    recipe = tabular_recipe(csv)
    recipe["training"].update({"cross_fit": folds, "early_stopping": {"metric": "val.loss", "patience": 2},
                               "epochs": 4})
    return recipe


def test_cross_fit_trains_one_member_per_fold_and_predicts_their_mean(tiny_csv, tmp_path, monkeypatch):
    import dlforge.workflows.train as train_module
    from dlforge.models import FoldEnsemble

    baseline_rows = []
    monkeypatch.setattr(train_module, "baseline_for",
                        lambda setting, splits, *a, **k: baseline_rows.append(len(splits["train"])))
    result = dlforge.train(_cross_fit_recipe(tiny_csv), out=tmp_path / "run", progress=False)
    metrics = result.metrics
    prepared = prepare(load_recipe(_cross_fit_recipe(tiny_csv)))
    pool = len(prepared.splits["train"]) + len(prepared.splits["val"])  # validation rows join the training rows
    assert metrics["cross_fit"]["folds"] == 3 and metrics["cross_fit"]["rows"] == pool
    assert [m["seed"] for m in metrics["cross_fit"]["members"]] == [0, 1, 2]
    # val: out of fold, so every pooled row is scored once (by the member that did not train on it).
    assert np.sum(metrics["val"]["confusion_matrix"]) == pool
    assert np.sum(metrics["test"]["confusion_matrix"]) == len(prepared.splits["test"])
    assert {row["fold"] for row in result.history} == {0, 1, 2}
    assert all((result.run_dir / "checkpoint" / f"fold_{i}" / "checkpoint" / "state.pt").is_file() for i in range(3))
    assert baseline_rows == [pool]  # the baseline trains on the same pooled rows the members drew on

    model = dlforge.load(result.run_dir).model
    assert isinstance(model, FoldEnsemble) and len(model.members) == 3
    first, second = (dict(m.named_parameters()) for m in model.members[:2])
    assert any(not torch.equal(first[k], second[k]) for k in first)  # members trained apart
    batch = {name: t[:6] for name, t in prepared.splits["test"].x.items()}
    with torch.no_grad():
        each = torch.stack([torch.sigmoid(m(batch)["target"]) for m in model.members], dim=1)
        combined = torch.sigmoid(model(batch)["target"])
    assert combined.squeeze(1) == pytest.approx(each.mean(1).squeeze(1), abs=1e-5)


class _StopAfter:
    """A stop request that turns on after `calls` checks (the trainer checks once per step)."""

    def __init__(self, calls: int):
        self.calls = calls

    def is_set(self) -> bool:
        self.calls -= 1
        return self.calls < 0


@pytest.mark.slow  # three trainings of three members: about 10 s
def test_cross_fit_resume_reloads_finished_members_and_trains_the_rest(tiny_csv, tmp_path):
    from dlforge.core.errors import TrainingInterrupted

    whole = dlforge.train(_cross_fit_recipe(tiny_csv), out=tmp_path / "whole", progress=False)
    steps = sum(m["epochs_run"] for m in whole.metrics["cross_fit"]["members"][:1]) * 4  # 4 steps an epoch
    with pytest.raises(TrainingInterrupted) as stopped:  # during the second member
        dlforge.train(_cross_fit_recipe(tiny_csv), out=tmp_path / "cut", progress=False, stop=_StopAfter(steps + 2))
    assert stopped.value.where == str(tmp_path / "cut")  # the run resumes, not the member's folder
    assert not (tmp_path / "cut" / "checkpoint" / "fold_2").exists()
    resumed = dlforge.train(resume=tmp_path / "cut", progress=False)
    for part in ("val", "test"):
        assert resumed.metrics[part]["accuracy"] == whole.metrics[part]["accuracy"]
        assert resumed.metrics[part]["loss"] == pytest.approx(whole.metrics[part]["loss"], abs=1e-6)
    assert resumed.metrics["cross_fit"]["members"] == whole.metrics["cross_fit"]["members"]


def test_cross_fit_needs_a_row_of_each_class_per_fold(tiny_csv):
    frame = pd.read_csv(tiny_csv)
    frame.loc[frame.index[:3], "target"] = "rare"  # 3 rows of a third class, some of them held out for test
    frame.to_csv(tiny_csv, index=False)
    recipe = _cross_fit_recipe(tiny_csv, folds=8)
    recipe["outputs"] = [{"name": "target", "type": "category"}]
    recipe["data"]["split"]["test"] = 0.0
    with pytest.raises(DataError, match="fewer rows than the 8 folds") as err:
        dlforge.train(recipe, progress=False)
    assert err.value.where == "training.cross_fit"


# ---------------------------------------------------------------- what init writes
@pytest.fixture
def skewed_csv(tmp_path):
    rng = np.random.default_rng(0)
    n = 300
    income = rng.lognormal(10, 1, n)
    age = rng.normal(40, 10, n)
    kind = rng.choice(["a", "b", "c"], n, p=[0.6, 0.3, 0.1])
    frame = pd.DataFrame({"income": income, "age": age, "city": rng.choice(["x", "y"], n), "kind": kind,
                          "label": np.where(np.log(income) + 0.05 * age > 12, "hi", "lo")})
    frame.to_csv(tmp_path / "skewed.csv", index=False)
    return tmp_path / "skewed.csv"


def _entries(text):
    return {e["name"]: e for e in yaml.safe_load(text)["inputs"]}


def test_init_writes_the_strong_tabular_default(skewed_csv):
    text = init(str(skewed_csv), "label", baseline=False)
    entries = _entries(text)
    assert entries["income"]["preprocessing"]["normalization"] == "quantile"  # skewness about 6
    assert entries["age"]["preprocessing"]["normalization"] == "standard"
    assert entries["age"]["embedding"]["name"] == "periodic"
    training = yaml.safe_load(text)["training"]
    assert training["optimizer"]["name"] == "adamw" and training["optimizer"]["weight_decay"] > 0
    assert training["early_stopping"]["metric"] == "val.loss" and training["epochs"] >= 30
    assert training["regularization"]["dropout"] > 0
    assert training["cross_fit"] == 5  # 300 rows: a cross-fit ensemble


def test_init_cross_fits_only_small_tables(tmp_path):
    rng = np.random.default_rng(0)
    n = 3000
    frame = pd.DataFrame({"x": rng.normal(size=n), "label": rng.choice(["a", "b"], n)})
    frame.to_csv(tmp_path / "big.csv", index=False)
    assert "cross_fit" not in yaml.safe_load(init(str(tmp_path / "big.csv"), "label", baseline=False))["training"]
    frame.iloc[:2999].to_csv(tmp_path / "small.csv", index=False)
    assert yaml.safe_load(init(str(tmp_path / "small.csv"), "label", baseline=False))["training"]["cross_fit"] == 5


def test_init_weighs_a_rare_class_and_suggests_pos_weight_for_binary(skewed_csv):
    category = yaml.safe_load(init(str(skewed_csv), "kind", baseline=False))["outputs"][0]
    assert category["class_weights"] == "balanced"  # 'c' is about 10% of the rows
    frame = pd.read_csv(skewed_csv)
    frame["rare"] = np.where(np.arange(len(frame)) % 10 == 0, "yes", "no")
    frame.to_csv(skewed_csv, index=False)
    text = init(str(skewed_csv), "rare", baseline=False)
    assert "pos_weight" not in yaml.safe_load(text)["outputs"][0]
    assert "imbalanced ('yes' is 10.0% of the rows" in text and "add pos_weight: balanced" in text


def test_init_ends_with_the_baseline_as_comments(skewed_csv, capsys):
    text = init(str(skewed_csv), "label")
    assert "# baseline (scikit-learn, same split, scored on the test rows" in text
    assert "#   hist_gradient_boosting: accuracy" in text and "#   logistic_regression: accuracy" in text
    assert yaml.safe_load(text) == yaml.safe_load(init(str(skewed_csv), "label", baseline=False))
    assert main_ok(["init", str(skewed_csv), "--target", "label", "--no-baseline"])
    assert "baseline" not in capsys.readouterr().out


# ---------------------------------------------------------------- the baseline beside a run
def test_run_reports_the_baseline_in_metrics_summary_and_report(tiny_csv, tmp_path, capsys):
    assert main_ok(["train", str(tiny_csv), "--target", "target", "--out", str(tmp_path / "run"), "-q",
                 "--set", "training.epochs=2"])
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    block = metrics["baseline"]
    assert block["split"] == "test"
    for model in ("hist_gradient_boosting", "logistic_regression"):
        assert 0.5 < block[model]["accuracy"] <= 1 and 0 <= block[model]["roc_auc"] <= 1 and block[model]["fit_seconds"] >= 0
    out = capsys.readouterr().out
    assert "baseline on test: hist_gradient_boosting accuracy" in out
    assert "hist_gradient_boosting (test)" in (tmp_path / "run" / "report.html").read_text()


def test_no_baseline_flag_and_non_tabular_runs_have_none(tiny_csv, tmp_path):
    assert main_ok(["train", str(tiny_csv), "--target", "target", "--out", str(tmp_path / "a"), "-q", "--no-baseline",
                 "--set", "training.epochs=1"])
    assert "baseline" not in json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert not baseline_module.applies({"inputs": {"image": {"type": "image"}}, "outputs": {"y": {"type": "category"}}})


def test_regression_baseline_is_scored_in_user_units(tiny_csv, tmp_path):
    recipe = tabular_recipe(tiny_csv, outputs=[{"name": "amount", "type": "number"}])
    result = dlforge.train(recipe, out=tmp_path / "run", progress=False)
    ridge = result.metrics["baseline"]["ridge"]
    assert ridge["r2"] > 0.95 and ridge["rmse"] < 0.5  # amount = 3·x1 + x2 + noise 0.1: linear, in its own units


def test_baseline_without_rows_to_score_says_so(tiny_csv):
    prepared = prepare(load_recipe(tabular_recipe(tiny_csv, data={"source": str(tiny_csv),
                                                                  "split": {"val": 0.0, "test": 0.0}})))
    assert baseline_module.fit_baseline(prepared.splits, prepared.signature()) == {
        "skipped": "no test or validation rows to score the baseline on (data.split.val and test are 0)"}


def test_without_scikit_learn_the_baseline_is_skipped_with_one_pip_line(tiny_csv, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "sklearn", None)  # `import sklearn` now raises ImportError
    monkeypatch.setattr(baseline_module, "_NOTICED", set())
    for run in ("a", "b"):
        result = dlforge.train(tabular_recipe(tiny_csv), out=tmp_path / run, progress=False)
        assert result.metrics["baseline"]["skipped"].endswith("for the baseline run: pip install 'dlforge[tabular]'")
        assert (tmp_path / run / "model.safetensors").is_file()  # the run itself is whole
    assert capsys.readouterr().err.count("dlforge[tabular]") == 1


# ---------------------------------------------------------------- best epoch = last epoch
def test_warning_when_the_best_epoch_is_the_last(tiny_csv, tmp_path, capsys):
    recipe = tabular_recipe(tiny_csv)
    recipe["training"].update(epochs=2, optimizer={"name": "adam", "lr": 0.001},
                              early_stopping={"metric": "val.loss", "patience": 5}, baseline=False)
    result = dlforge.train(recipe, out=tmp_path / "run", progress=True)
    assert result.metrics["best_epoch"] == 2  # a slow rate: val.loss still falls at epoch 2
    assert "the best epoch (val.loss) was the last one (2 of 2)" in result.metrics["warnings"][0]
    assert "training.epochs=4" in capsys.readouterr().err
    assert "warning:" in (tmp_path / "run" / "report.html").read_text()


def test_init_learns_a_positive_skewed_target_in_log_space(skewed_csv):
    output = yaml.safe_load(init(str(skewed_csv), "income", baseline=False))["outputs"][0]
    assert output == {"name": "income", "type": "number", "transform": "log"}
    assert "transform" not in yaml.safe_load(init(str(skewed_csv), "age", baseline=False))["outputs"][0]
