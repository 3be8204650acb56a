"""Multi-label targets (formats, thresholds, micro/macro F1) and several outputs with loss weights."""


import numpy as np
import pandas as pd
import pytest

import dlforge
from dlforge.data.features.multilabel import detect_separator, split_labels
from dlforge.core.errors import DataError


@pytest.fixture
def tags_csv(tmp_path):
    rng = np.random.default_rng(0)
    n = 240
    x1, x2 = rng.normal(size=n), rng.normal(size=n)
    tags = ["|".join(t for t, on in (("warm", a > 0), ("wet", b > 0), ("windy", a + b > 1)) if on) for a, b in zip(x1, x2)]
    frame = pd.DataFrame({"x1": x1, "x2": x2, "tags": tags, "kind": np.where(x1 > x2, "up", "down"),
                          "amount": 2 * x1 - x2 + rng.normal(scale=0.05, size=n)})
    path = tmp_path / "tags.csv"
    frame.to_csv(path, index=False)
    return path


def _recipe(csv, outputs, **training):
    return {"name": "heads", "data": {"source": str(csv), "split": {"val": 0.15, "test": 0.2, "seed": 0}},
            "inputs": [{"name": "x1", "type": "number"}, {"name": "x2", "type": "number"}],
            "outputs": outputs, "combiner": {"name": "concat", "layers": [32]},
            "training": {"epochs": 30, "batch_size": 32, "optimizer": {"name": "adam", "lr": 0.01}, **training}}


@pytest.mark.slow
def test_multilabel_learns_and_reports_micro_macro_f1(tags_csv, tmp_path):
    out = [{"name": "tags", "type": "multilabel", "thresholds": {"windy": 0.4}}]
    result = dlforge.train(_recipe(tags_csv, out, early_stopping={"metric": "val.macro_f1", "patience": 30}),
                           out=tmp_path / "run", progress=False)
    test = result.metrics["test"]
    assert test["micro_f1"] >= 0.85 and test["macro_f1"] >= 0.8
    assert test["per_label"]["windy"]["threshold"] == 0.4
    assert 0 <= test["hamming_loss"] <= 0.1
    predictor = dlforge.load(result.run_dir)
    assert predictor.predict({"x1": [2.0, -2.0], "x2": [2.0, -2.0]}).tolist() == ["warm|wet|windy", ""]
    assert predictor.predict_proba({"x1": [2.0], "x2": [2.0]}).shape == (1, 3)


@pytest.mark.parametrize("cells,expected", [
    (["a|b", "c", ""], "|"), (["a;b", "c"], ";"), (["a, b", "c"], ","), (['["a", "b"]', "[]"], "json"),
    (["a", "b"], "single")])
def test_label_formats_are_detected(cells, expected):
    assert detect_separator(np.array(cells, dtype=object), where="outputs.0") == expected


def test_split_labels_json_and_separator():
    assert split_labels(np.array(['["b", "a"]', "[]"], dtype=object), "json", where="o") == [["a", "b"], []]
    assert split_labels(np.array(["b | a", None], dtype=object), "|", where="o") == [["a", "b"], []]


@pytest.mark.parametrize("cells,message", [
    (["a|b", "c;d"], "separators"), (['{"a": 1}', "b"], "unknown multi-label format"),
    (np.array([1.0, 0.0, 1.0]), "numbers")])
def test_unknown_multilabel_formats_are_clear_errors(cells, message):
    with pytest.raises(DataError, match=message) as err:
        detect_separator(np.array(cells, dtype=object if isinstance(cells, list) else None), where="outputs.0")
    assert "hint" in err.value.render()


def test_multilabel_cli_exit_2_on_unknown_format(tmp_path, capsys):
    import yaml

    from dlforge.cli import main

    path = tmp_path / "bad.csv"
    pd.DataFrame({"x1": range(20), "x2": range(20), "tags": ["a|b", "c;d"] * 10}).to_csv(path, index=False)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(_recipe(path, [{"name": "tags", "type": "multilabel"}])))
    with pytest.raises(SystemExit) as info:
        main(["train", str(recipe), "--out", str(tmp_path / "run"), "-q"])
    assert info.value.code == 2 and "separators" in capsys.readouterr().err


@pytest.mark.slow
def test_several_outputs_with_loss_weights(tags_csv, tmp_path):
    outputs = [{"name": "kind", "type": "category", "loss_weight": 2.0},
               {"name": "amount", "type": "number", "loss_weight": 0.5},
               {"name": "tags", "type": "multilabel"}]
    result = dlforge.train(_recipe(tags_csv, outputs, early_stopping={"metric": "val.kind.accuracy", "patience": 30}),
                           out=tmp_path / "run", progress=False)
    test = result.metrics["test"]
    assert test["kind"]["accuracy"] >= 0.9 and test["amount"]["r2"] >= 0.9 and test["tags"]["micro_f1"] >= 0.8
    history = pd.read_csv(result.run_dir / "history.csv")
    assert {"val.kind.accuracy", "val.amount.rmse", "val.tags.macro_f1"} <= set(history.columns)
    # the total loss is the weighted sum of the per-output losses
    assert test["loss"] == pytest.approx(2.0 * test["kind"]["loss"] + 0.5 * test["amount"]["loss"] + test["tags"]["loss"],
                                         rel=1e-4)
    predictions = dlforge.load(result.run_dir).predict({"x1": [1.0], "x2": [-1.0]})
    assert set(predictions) == {"kind", "amount", "tags"} and predictions["kind"][0] == "up"


def test_single_class_target_is_an_error(tmp_path):
    path = tmp_path / "one.csv"
    pd.DataFrame({"x1": range(30), "x2": range(30), "y": ["same"] * 30}).to_csv(path, index=False)
    with pytest.raises(DataError, match="single class"):
        dlforge.train(_recipe(path, [{"name": "y", "type": "category"}]), out=tmp_path / "run", progress=False)
