"""Issue #11 item 1: non-finite values never become a NaN model with exit 0.

`inf` in a number column is handled by the missing-value policy (counted) or refused by name; statistics
that overflow are refused with their rows; a non-finite loss stops training at once with the step, the
batch and the likely cause, keeping the last good checkpoint; JSON never holds NaN/Infinity.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

import dlforge
from dlforge.core.errors import ArtifactError, DataError, TrainingDiverged
from dlforge.core.files import write_json
from dlforge.training.checkpoint import load_checkpoint


def _csv(tmp_path, x1, name="data.csv"):
    rng = np.random.default_rng(0)
    n = len(x1)
    x2 = rng.normal(size=n)
    frame = pd.DataFrame({"x1": x1, "x2": x2, "target": np.where(x2 > 0, "good", "bad")})
    path = tmp_path / name
    frame.to_csv(path, index=False)
    return path


def _recipe(csv, missing="mean", **training):
    return {"name": "nonfinite",
            "data": {"source": str(csv), "split": {"val": 0.2, "test": 0.2, "seed": 0}},
            "inputs": [{"name": "x1", "type": "number", "preprocessing": {"missing": missing}},
                       {"name": "x2", "type": "number"}],
            "outputs": [{"name": "target", "type": "binary"}],
            "combiner": {"name": "concat", "layers": [8]},
            "training": {"epochs": 2, "batch_size": 16, "optimizer": {"name": "adam", "lr": 0.01}, **training}}


def _normal(n=100):
    return np.random.default_rng(1).normal(size=n).astype(object)


def _all_finite(run_dir) -> bool:
    return all(bool(torch.isfinite(v).all()) for v in load_file(str(run_dir / "model.safetensors")).values())


def test_inf_in_a_number_column_is_filled_by_the_missing_policy_and_counted(tmp_path, capsys):
    x1 = _normal()
    x1[[4, 9]] = ["inf", "-inf"]
    run = dlforge.train(_recipe(_csv(tmp_path, x1)), out=tmp_path / "run")
    assert _all_finite(run.run_dir)
    state = json.loads((run.run_dir / "model.json").read_text())["features"]["inputs"]["x1"]
    assert all(math.isfinite(state[k]) for k in ("fill", "shift", "scale"))
    assert run.metrics["data"]["policies"]["x1"] == {"filled_infinite": 2}
    assert "x1: 2 value(s) filled infinite" in capsys.readouterr().err
    # predict time: inf is filled as in training, so the probabilities are numbers, not blanks
    probs = dlforge.load(run.run_dir).predict_proba({"x1": [float("inf"), 0.5], "x2": [0.1, 0.2]})
    assert np.isfinite(probs).all()


def test_inf_under_missing_error_is_refused_with_its_rows(tmp_path):
    x1 = _normal()
    x1[7] = "inf"
    with pytest.raises(DataError, match=r"column 'x1' has 1 missing value\(s\) \(1 infinite\) \(data rows 7\)"):
        dlforge.train(_recipe(_csv(tmp_path, x1), missing="error"), out=tmp_path / "run")


def test_values_whose_statistics_overflow_are_refused_by_row(tmp_path):
    x1 = _normal()
    x1[[5, 6]] = [1e308, -1e308]  # once: "scale": inf in model.json, the column 0 in every row
    with pytest.raises(DataError, match=r"column 'x1' has values too large to normalise.*data rows 5, 6"):
        dlforge.train(_recipe(_csv(tmp_path, x1)), out=tmp_path / "run")
    assert not (tmp_path / "run" / "model.json").exists()


def test_a_value_out_of_float32_range_at_predict_time_is_refused(tmp_path):
    run = dlforge.train(_recipe(_csv(tmp_path, _normal()), epochs=1), out=tmp_path / "run")
    with pytest.raises(DataError, match=r"column 'x1' has values \[1e\+300\] \(data rows 0\) too far"):
        dlforge.load(run.run_dir).predict({"x1": [1e300], "x2": [0.0]})


@pytest.mark.parametrize("training,where,cause", [
    ({"optimizer": {"name": "adam", "lr": float("inf")}}, "training.optimizer.lr", "the learning rate is inf"),
    ({"regularization": {"l2": 1e308}}, "training.regularization.l2", "the penalty overflows"),
])
def test_a_non_finite_loss_stops_training_with_step_batch_and_cause(tmp_path, training, where, cause):
    with pytest.raises(TrainingDiverged) as info:
        dlforge.train(_recipe(_csv(tmp_path, _normal()), **training), out=tmp_path / "run")
    assert info.value.where == where
    assert cause in info.value.message
    assert "at epoch 1, step" in info.value.message and "training-split rows" in info.value.message
    assert not (tmp_path / "run" / "model.safetensors").exists()  # nothing NaN was saved


class PoisonWeightsAt:
    """Turns the weights to inf when epoch `epoch` starts: the loss of that epoch's first step is NaN."""

    def __init__(self, epoch):
        self.epoch = epoch

    def on_epoch_start(self, trainer, epoch):
        if epoch == self.epoch:
            with torch.no_grad():
                for p in trainer.model.parameters():
                    p.fill_(float("inf"))


def test_divergence_keeps_the_last_good_checkpoint(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match=r"at epoch 2, step 1 \(global step 5;"):
        dlforge.train(_recipe(_csv(tmp_path, _normal()), epochs=3), out=out, callbacks=[PoisonWeightsAt(1)])
    state = load_checkpoint(out)
    assert (state["epoch"], state["step"]) == (1, 0)  # the end of epoch 1: the last good one
    assert all(bool(torch.isfinite(v).all()) for v in state["model"].values())


def test_json_never_holds_nan_or_infinity(tmp_path):
    with pytest.raises(ValueError, match=r"nan at 'test.roc_auc' cannot be written as JSON"):
        write_json(tmp_path / "a.json", {"test": {"roc_auc": float("nan"), "accuracy": 1.0}})
    assert not list(tmp_path.iterdir())  # nothing written, no temp file left
    write_json(tmp_path / "m.json", {"test": {"roc_auc": np.float32("nan"), "x": [float("inf")]}}, nonfinite="null")
    assert json.loads((tmp_path / "m.json").read_text()) == {"test": {"roc_auc": None, "x": [None]}}


def test_weights_with_nan_are_never_saved(tmp_path):
    from dlforge.artifact.format import save_model

    model = torch.nn.Linear(2, 1)
    with torch.no_grad():
        model.weight[0, 0] = float("nan")
    with pytest.raises(ArtifactError, match=r"refusing to save a model whose weights hold NaN/inf \(weight\)"):
        save_model(tmp_path, None, {}, {}, model)
