"""The lean core install: digits without scikit-learn, Parquet as an extra with its pip line, folds in numpy."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from dlforge.core.errors import DataError
from dlforge.data.builtin import DIGITS_NPZ
from dlforge.data.readers import load_table
from dlforge.workflows.cv import fold_ids
from conftest import needs_data


def test_shipped_digits_are_scikit_learns():
    datasets = pytest.importorskip("sklearn.datasets")
    bunch = datasets.load_digits()
    with np.load(DIGITS_NPZ) as archive:
        assert np.array_equal(archive["images"].astype(np.float64), bunch.images)
        assert np.array_equal(archive["target"], bunch.target)
    table = load_table("builtin:digits")
    expected = (bunch.images * (255.0 / 16.0)).round().astype(np.uint8)  # what dlforge did with scikit-learn
    assert table.columns["image"].tobytes() == expected.tobytes()
    assert np.array_equal(table.columns["label"], bunch.target) and table.columns["label"].dtype == np.int64


def test_builtin_digits_needs_no_files():
    table = load_table("builtin:digits")
    assert table.n_rows == 1797 and table.columns["image"].shape == (1797, 8, 8)
    assert table.columns["image"].max() == 255 and table.origin == "builtin:digits"
    assert DIGITS_NPZ.stat().st_size < 100_000


def test_parquet_without_pyarrow_names_the_extra(tmp_path, monkeypatch):
    path = tmp_path / "rows.parquet"
    path.write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # `import pyarrow` now raises ImportError
    with pytest.raises(DataError, match="needs pyarrow") as err:
        load_table(str(path))
    assert "pip install 'dlforge[parquet]'" in err.value.hint


@needs_data("tuxpaint_photos")
def test_a_file_inside_a_builtin_folder_keeps_its_builtin_origin():
    table = load_table("builtin:tuxpaint_photos/labels.csv")
    assert table.origin == "builtin:tuxpaint_photos/labels.csv" and table.n_rows > 0


def test_unstratified_folds_cover_every_row_evenly_and_follow_the_seed():
    ids = fold_ids(103, None, 5, seed=3)
    assert sorted(np.bincount(ids).tolist()) == [20, 20, 21, 21, 21]
    assert np.array_equal(ids, fold_ids(103, None, 5, seed=3))
    assert not np.array_equal(ids, fold_ids(103, None, 5, seed=4))


def test_stratified_folds_balance_every_class_within_one_row():
    rng = np.random.default_rng(0)
    labels = rng.choice(np.array(["a", "b", "c"], dtype=object), size=97, p=[0.6, 0.3, 0.1])
    ids = fold_ids(97, labels, 4, seed=0)
    assert np.bincount(ids).max() - np.bincount(ids).min() <= 1
    for label in ("a", "b", "c"):
        per_fold = np.bincount(ids[labels == label], minlength=4)
        assert per_fold.max() - per_fold.min() <= 1, (label, per_fold)
