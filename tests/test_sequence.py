"""Sequence input: npz arrays, NaN right-padding, wide columns, strings of numbers, every encoder, bad values."""

import numpy as np
import pandas as pd
import pytest
import torch

import dlforge
from dlforge.data.features.sequence import lengths_of, parse_series
from dlforge.core.errors import DataError
from conftest import needs_data


@pytest.fixture
def series_npz(tmp_path):
    """Two classes (rising vs falling ramps + noise), 2 channels, variable lengths with NaN right-padding."""
    rng = np.random.default_rng(0)
    n, length = 120, 30
    x = np.full((n, 2, length), np.nan, dtype=np.float32)
    y = np.arange(n) % 2
    lengths = rng.integers(15, length + 1, size=n)
    for i in range(n):
        t = np.linspace(0, 1, lengths[i])
        ramp = t if y[i] else 1 - t
        x[i, 0, :lengths[i]] = ramp + rng.normal(0, 0.1, lengths[i])
        x[i, 1, :lengths[i]] = rng.normal(0, 1, lengths[i])
    path = tmp_path / "ramps.npz"
    np.savez(path, series=x, label=np.where(y, "up", "down"))
    return path


def _recipe(source, encoder, **prep):
    return {"name": "seq", "data": {"source": str(source), "split": {"val": 0.2, "test": 0.2, "seed": 0}},
            "inputs": [{"name": "series", "type": "sequence", "encoder": encoder, "preprocessing": prep}],
            "outputs": [{"name": "label", "type": "category"}],
            "training": {"epochs": 10, "batch_size": 16, "optimizer": {"name": "adam", "lr": 0.01}}}


ENCODERS = [{"name": "cnn", "channels": [8, 8], "kernel_sizes": [5, 3]},
            {"name": "cnn", "channels": [8], "kernel_sizes": [8, 5, 3], "residual": True},
            {"name": "lstm", "dim": 8, "hidden": 8}, {"name": "gru", "dim": 8, "hidden": 8, "pooling": "mean"},
            {"name": "transformer", "dim": 16, "heads": 2, "layers": 1, "ff_dim": 32, "dropout": 0.0}]


@pytest.mark.slow
@pytest.mark.parametrize("encoder", ENCODERS, ids=lambda e: e["name"] + ("-res" if e.get("residual") else ""))
def test_each_sequence_encoder_learns(series_npz, tmp_path, encoder):
    result = dlforge.train(_recipe(series_npz, encoder), out=tmp_path / "run", progress=False)
    assert result.metrics["test"]["accuracy"] >= 0.85
    predictor = dlforge.load(result.run_dir)
    up = np.linspace(0, 1, 20)[None, :].repeat(2, 0)  # one (channels, length) series, shorter than training
    assert list(predictor.predict({"series": up[None]})) == ["up"]


def test_padding_is_masked(series_npz):
    """The same series with more NaN padding encodes identically: padding never reaches a result."""
    from dlforge.data.features.sequence import SequenceFeature
    from dlforge.models.encoders.sequence import SequenceRNN, SequenceTransformer
    from dlforge.recipe import Regularization, SequenceInput, SequenceRNNEncoder, TransformerEncoderConfig

    feat = SequenceFeature(SequenceInput(name="s"), field_path="inputs.0")
    base = np.random.default_rng(1).normal(size=(1, 1, 10))
    feat.fit(np.concatenate([base, np.full((1, 1, 10), np.nan)], axis=2))  # fitted length 10
    short = feat.transform(np.concatenate([base[:, :, :6], np.full((1, 1, 4), np.nan)], axis=2))
    assert short[0, -1].tolist() == [1] * 6 + [0] * 4
    torch.manual_seed(0)
    sig = feat.signature()
    for enc in (SequenceRNN(SequenceRNNEncoder(dim=4, hidden=4), sig, Regularization()),
                SequenceTransformer(TransformerEncoderConfig(dim=8, heads=2, layers=1, dropout=0.0), sig, Regularization())):
        enc.eval()
        changed = short.clone()
        changed[:, 0, 6:] = 5.0  # garbage where the mask says padding
        assert torch.allclose(enc(short), enc(changed), atol=1e-6)


@pytest.mark.slow
def test_wide_columns_become_one_series(tmp_path):
    rng = np.random.default_rng(0)
    y = np.arange(80) % 2
    steps = {f"t{i}": (i / 10.0) * np.where(y, 1, -1) + rng.normal(0, 0.1, 80) for i in range(10)}
    path = tmp_path / "wide.csv"
    pd.DataFrame({**steps, "label": np.where(y, "up", "down")}).to_csv(path, index=False)
    recipe = _recipe(path, {"name": "cnn", "channels": [8], "kernel_sizes": [3]})
    recipe["inputs"][0]["columns"] = [f"t{i}" for i in range(10)]
    result = dlforge.train(recipe, out=tmp_path / "run", progress=False)
    assert result.metrics["test"]["accuracy"] >= 0.9


def test_ragged_strings_are_padded_and_lengths_kept():
    series = parse_series(np.array(["1 2 3", "4,5", "[6; 7; 8; 9]"], dtype=object), name="s", where="inputs.0")
    assert series.shape == (3, 1, 4)
    assert lengths_of(series).tolist() == [3, 2, 4]


def test_non_numeric_sequence_value_names_row():
    with pytest.raises(DataError, match=r"row 1 has a non-numeric value 'abc'") as err:
        parse_series(np.array(["1 2", "3 abc"], dtype=object), name="s", where="inputs.0")
    assert "separated by spaces" in err.value.hint


def test_non_numeric_wide_column_is_an_error(tmp_path):
    path = tmp_path / "wide.csv"
    pd.DataFrame({"t0": ["1", "x"] * 10, "t1": [1.0, 2.0] * 10, "label": ["a", "b"] * 10}).to_csv(path, index=False)
    recipe = _recipe(path, {"name": "cnn", "channels": [4], "kernel_sizes": [3]})
    recipe["inputs"][0]["columns"] = ["t0", "t1"]
    with pytest.raises(DataError, match="non-numeric"):
        dlforge.train(recipe, out=tmp_path / "run", progress=False)


@pytest.mark.slow
def test_truncation_is_counted(series_npz, tmp_path):
    result = dlforge.train(_recipe(series_npz, {"name": "gru", "dim": 4, "hidden": 4}, max_length=20) |
                           {"training": {"epochs": 1}}, out=tmp_path / "run", progress=False)
    assert result.metrics["data"]["policies"]["series"]["truncated"] > 0


@needs_data("ucr_uea")
def test_builtin_ucr_names_and_labels():
    from dlforge.data.readers import load_table

    table = load_table("builtin:ucr_uea/BasicMotions")
    assert table.columns["series"].shape == (80, 6, 100)
    assert set(table.columns["label"]) == {"Badminton", "Running", "Standing", "Walking"}
    with pytest.raises(DataError, match="GunPoint"):
        load_table("builtin:ucr_uea/GunPont")
