"""Data: sources, built-in names, splits, and per-type features fitted on train only."""

import numpy as np
import pandas as pd
import pytest
import torch

from dlforge import DataError, load_recipe
from dlforge.data.features.number import to_float
from dlforge.data import load_table, prepare
from dlforge.data.split import split_rows
from conftest import needs_data, tabular_recipe


def test_csv_and_parquet_give_the_same_table(tiny_csv, tmp_path):
    frame = pd.read_csv(tiny_csv)
    parquet = tmp_path / "tiny.parquet"
    frame.to_parquet(parquet)
    a, b = load_table(str(tiny_csv)), load_table(str(parquet))
    assert list(a.columns) == list(b.columns)
    # A CSV cell is the text written in the file (a number is parsed by the feature that reads it as one).
    assert isinstance(a.columns["x1"][0], str)
    np.testing.assert_allclose(to_float(a.columns["x1"], name="x1", where="x1"), b.columns["x1"])


def test_npz_arrays_become_image_label_with_official_split(tmp_path):
    path = tmp_path / "imgs.npz"
    rng = np.random.default_rng(0)
    np.savez(path, x_train=rng.integers(0, 255, (30, 6, 6), dtype=np.uint8), y_train=np.arange(30) % 3,
             x_test=rng.integers(0, 255, (9, 6, 6), dtype=np.uint8), y_test=np.arange(9) % 3)
    table = load_table(str(path))
    assert table.columns["image"].shape == (39, 6, 6)
    assert (table.split == "test").sum() == 9


def test_missing_builtin_names_the_file_and_where_to_put_it(monkeypatch, tmp_path):
    monkeypatch.setenv("DLFORGE_DATA", str(tmp_path))
    with pytest.raises(DataError) as info:
        load_table("builtin:mnist")
    assert str(tmp_path / "mnist" / "mnist.npz") in info.value.message
    assert "DLFORGE_DATA" in info.value.hint


def test_unknown_builtin_suggests():
    with pytest.raises(DataError, match="did you mean 'mnist'"):
        load_table("builtin:mnsit")


def test_absent_column_lists_existing_ones(tiny_csv):
    recipe = load_recipe(tabular_recipe(tiny_csv, inputs=[{"name": "colour", "type": "category"}]))
    with pytest.raises(DataError) as info:
        prepare(recipe)
    assert "column 'colour' named at inputs.0.name is not in the data — did you mean 'color'?" in info.value.message
    assert "x1, x2, color, flag, target, amount" in info.value.hint


def test_split_is_stratified_seeded_and_disjoint():
    labels = np.array(["a"] * 80 + ["b"] * 20)
    rows = split_rows(100, official=None, labels=labels, val=0.1, test=0.2, seed=3)
    again = split_rows(100, official=None, labels=labels, val=0.1, test=0.2, seed=3)
    assert all(np.array_equal(rows[k], again[k]) for k in rows)
    assert len(set(rows["train"]) | set(rows["val"]) | set(rows["test"])) == 100
    assert (labels[rows["test"]] == "b").sum() == 4  # 20% of 20


def test_official_test_split_is_respected():
    official = np.array(["train"] * 90 + ["test"] * 10)
    rows = split_rows(100, official=official, labels=None, val=0.1, test="auto", seed=0)
    assert set(rows["test"]) == set(range(90, 100))
    assert len(rows["val"]) == 9


def test_class_without_training_rows_is_an_error(tmp_path):
    frame = pd.DataFrame({"x": np.arange(12.0), "y": ["a"] * 6 + ["b"] * 5 + ["c"],
                          "split": ["train"] * 6 + ["train"] * 5 + ["test"]})
    frame.to_csv(tmp_path / "d.csv", index=False)
    recipe = load_recipe({"data": {"source": str(tmp_path / "d.csv")}, "inputs": [{"name": "x", "type": "number"}],
                          "outputs": [{"name": "y", "type": "category"}]})
    with pytest.raises(DataError, match=r"class\(es\) \['c'\] of 'y' appear in test but have no training rows"):
        prepare(recipe)


def test_empty_dataset_is_an_error(tmp_path):
    (tmp_path / "e.csv").write_text("x,y\n")
    recipe = load_recipe({"data": {"source": str(tmp_path / "e.csv")}, "inputs": [{"name": "x", "type": "number"}],
                          "outputs": [{"name": "y", "type": "binary"}]})
    with pytest.raises(DataError, match="no rows"):
        prepare(recipe)


def test_nan_policy_error_names_rows(tiny_csv):
    recipe = tabular_recipe(tiny_csv)
    recipe["inputs"][1]["preprocessing"] = {"missing": "error"}
    with pytest.raises(DataError) as info:
        prepare(load_recipe(recipe))
    assert "column 'x2' has 3 missing value(s)" in info.value.message
    assert "inputs.1.preprocessing.missing" in info.value.where


def test_nan_filled_counted_and_indicated(tiny_csv):
    prepared = prepare(load_recipe(tabular_recipe(tiny_csv)))
    x2 = prepared.inputs["x2"]
    assert x2.indicator_ is True
    assert sum(prepared.report["policies"]["x2"].values()) == 3  # every filled NaN is counted
    train = prepared.splits["train"].x["x2"]
    assert train.shape[1] == 2
    assert abs(float(train[:, 0][train[:, 1] == 0].mean())) < 0.2  # standardised on train


def test_median_and_zero_policies(tiny_csv):
    for policy, expected in (("zero", 0.0), ("median", None)):
        recipe = tabular_recipe(tiny_csv)
        recipe["inputs"][1]["preprocessing"] = {"missing": policy, "normalization": "none"}
        prepared = prepare(load_recipe(recipe))
        feature = prepared.inputs["x2"]
        raw = pd.read_csv(tiny_csv)["x2"]
        if expected is None:
            assert feature.fill_ != 0.0 and abs(feature.fill_ - raw.median()) < 0.3
        else:
            assert feature.fill_ == expected


def test_category_vocabulary_min_frequency_and_unknown_bucket(tiny_csv):
    recipe = tabular_recipe(tiny_csv)
    recipe["inputs"][2]["preprocessing"] = {"min_frequency": 1}
    prepared = prepare(load_recipe(recipe))
    feature = prepared.inputs["color"]
    assert feature.vocabulary_[0] == "<unknown>" and set(feature.vocabulary_[1:]) == {"red", "green", "blue"}
    codes = feature.transform(np.array(["red", "purple", None], dtype=object))
    assert codes[1] == 0 and codes[2] == 0 and codes[0] > 0
    rare = tabular_recipe(tiny_csv)
    rare["inputs"][2]["preprocessing"] = {"min_frequency": 1000}
    assert prepare(load_recipe(rare)).inputs["color"].vocabulary_ == ["<unknown>"]


def test_feature_state_is_json_and_restores_exactly(tiny_csv):
    import json

    from dlforge.data import build_features

    recipe = load_recipe(tabular_recipe(tiny_csv))
    prepared = prepare(recipe)
    inputs, outputs = build_features(recipe)
    table = load_table(str(tiny_csv))
    for name, feature in {**inputs, **outputs}.items():
        fitted = {**prepared.inputs, **prepared.outputs}[name]
        feature.load_state(json.loads(json.dumps(fitted.state())))
        assert feature.transform(table.columns[name]).equal(fitted.transform(table.columns[name]))


def test_non_numeric_value_in_number_column(tmp_path):
    pd.DataFrame({"x": ["1", "2", "three", "4"] * 5, "y": ["a", "b"] * 10}).to_csv(tmp_path / "d.csv", index=False)
    recipe = load_recipe({"data": {"source": str(tmp_path / "d.csv")}, "inputs": [{"name": "x", "type": "number"}],
                          "outputs": [{"name": "y", "type": "category"}]})
    with pytest.raises(DataError, match=r"non-numeric values \['three'"):
        prepare(recipe)


def test_image_scaling_modes():
    from dlforge.data.features.image import ImageFeature
    from dlforge.recipe import ImageInput

    images = np.full((4, 5, 5), 255, dtype=np.uint8)
    images[0] = 0
    for scale, low, high in (("unit", 0.0, 1.0), ("symmetric", -1.0, 1.0), ("none", 0.0, 255.0)):
        feat = ImageFeature(ImageInput(name="i", preprocessing={"scale": scale}), field_path="inputs.0").fit(images)
        x = feat.transform(images)
        assert x.shape == (4, 1, 5, 5) and float(x.min()) == low and float(x.max()) == high
    feat = ImageFeature(ImageInput(name="i", preprocessing={"scale": "standard", "channels": 3, "size": [8, 8]}),
                        field_path="inputs.0").fit(images)
    x = feat.transform(images)
    assert x.shape == (4, 3, 8, 8) and abs(float(x.mean())) < 1e-4


def test_image_interpolation_changes_pixels(tmp_path):
    from PIL import Image

    from dlforge.data.features.image import ImageFeature
    from dlforge.data.images.files import decode_file
    from dlforge.recipe import ImageInput

    grid = (16 * np.arange(8)[:, None] + np.arange(8)).astype(np.uint8)  # pixel value 16 * row + column
    Image.fromarray(grid).save(tmp_path / "grid.png")
    # Nearest keeps the pixel whose centre is nearest: rows/columns 1, 3, 5, 7 of 8, in files and arrays alike.
    expected = [[17, 19, 21, 23], [49, 51, 53, 55], [81, 83, 85, 87], [113, 115, 117, 119]]
    nearest = decode_file(tmp_path / "grid.png", channels=1, size=(4, 4), fit="stretch", interpolation="nearest")
    assert nearest[:, :, 0].tolist() == expected
    feat = ImageFeature(ImageInput(name="i", preprocessing={"size": [4, 4], "scale": "none", "interpolation": "nearest"}),
                        field_path="inputs.0").fit(grid[None])
    assert feat.transform(grid[None])[0, 0].tolist() == expected

    photo = np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    Image.fromarray(photo).save(tmp_path / "photo.png")
    for fit, shorter in (("stretch", None), ("crop", 14), ("pad", None)):
        decoded = {name: decode_file(tmp_path / "photo.png", channels=3, size=(12, 12), fit=fit, shorter=shorter,
                                     interpolation=name) for name in ("bilinear", "bicubic")}
        assert decoded["bilinear"].shape == decoded["bicubic"].shape == (12, 12, 3)
        assert not np.array_equal(decoded["bilinear"], decoded["bicubic"]), fit
    arrays = {name: ImageFeature(ImageInput(name="i", preprocessing={"size": [12, 12], "interpolation": name}),
                                 field_path="inputs.0").fit(photo[None]).transform(photo[None])
              for name in ("bilinear", "bicubic")}
    assert not torch.equal(arrays["bilinear"], arrays["bicubic"])
    with pytest.raises(DataError, match="unknown interpolation 'lanczos'"):
        decode_file(tmp_path / "photo.png", channels=3, size=(12, 12), fit="stretch", interpolation="lanczos")


@needs_data("adult")
def test_builtin_adult_has_official_split():
    table = load_table("builtin:adult")
    assert table.n_rows == 32561 + 16281 and (table.split == "test").sum() == 16281


def test_missing_target_names_file_rows(tmp_path):
    frame = pd.DataFrame({"x": np.arange(20.0), "y": ["a", "b"] * 10})
    frame.loc[[4, 9], "y"] = None
    frame.to_csv(tmp_path / "d.csv", index=False)
    for kind in ("category", "binary"):
        recipe = load_recipe({"data": {"source": str(tmp_path / "d.csv")}, "inputs": [{"name": "x", "type": "number"}],
                              "outputs": [{"name": "y", "type": kind}]})
        with pytest.raises(DataError, match=r"target 'y' has 2 missing value\(s\) \(data rows 4, 9\)"):
            prepare(recipe)
