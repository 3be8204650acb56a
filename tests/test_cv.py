"""`dlforge cv`: stratified folds, every row held out once, mean ± std, per-fold CSV."""

import json

import numpy as np
import pandas as pd
import pytest
import yaml

from dlforge.cli import main
from dlforge.workflows.cv import cross_validate, fold_ids
from dlforge.core.errors import DataError
from conftest import tabular_recipe


def test_folds_are_stratified_and_cover_every_row():
    labels = np.array(["a"] * 30 + ["b"] * 10, dtype=object)
    ids = fold_ids(40, labels, 5, seed=0)
    assert sorted(np.bincount(ids).tolist()) == [8] * 5
    for k in range(5):
        assert (labels[ids == k] == "b").sum() == 2


def test_too_few_rows_per_class_for_folds():
    with pytest.raises(DataError, match="fewer rows than the 5 folds") as err:
        fold_ids(12, np.array(["a"] * 9 + ["b"] * 3, dtype=object), 5, seed=0)
    assert "--folds 3" in err.value.hint


@pytest.mark.slow
def test_cv_writes_fold_csv_and_summary(tiny_csv, tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(tabular_recipe(tiny_csv)))
    main(["cv", str(recipe), "--folds", "3", "--out", str(tmp_path / "cv"), "--set", "training.epochs=2"])
    folds = pd.read_csv(tmp_path / "cv" / "folds.csv")
    assert len(folds) == 3 and folds["test_rows"].sum() == 200
    summary = json.loads((tmp_path / "cv" / "cv.json").read_text())["summary"]
    assert summary["accuracy"]["mean"] == pytest.approx(folds["test.accuracy"].mean())
    assert summary["accuracy"]["std"] == pytest.approx(folds["test.accuracy"].std())
    assert "accuracy" in capsys.readouterr().out


def test_cv_regression_uses_plain_kfold(tiny_csv):
    recipe = tabular_recipe(tiny_csv, outputs=[{"name": "amount", "type": "number"}])
    recipe["training"]["epochs"] = 2
    result = cross_validate(recipe, folds=2)
    assert set(result.summary) >= {"mae", "rmse", "r2"} and len(result.folds) == 2
