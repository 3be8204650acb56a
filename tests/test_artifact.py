"""Run directory as artifact: safe loading, format versions, Predictor inputs and their errors."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import dlforge
from dlforge import ArtifactError, DataError, PredictError
from dlforge.artifact.format import FORMAT_VERSION
from conftest import tabular_recipe


@pytest.fixture(scope="module")
def digit_images(tmp_path_factory):
    from sklearn.datasets import load_digits

    digits = load_digits()
    folder = tmp_path_factory.mktemp("pngs")
    paths = []
    for i in range(6):
        path = folder / f"d{i}.png"
        Image.fromarray((digits.images[i] * 255 / 16).astype(np.uint8)).save(path)
        paths.append(path)
    return paths, digits.target[:6], (digits.images[:6] * 255 / 16).astype(np.uint8)


def test_model_json_is_self_describing(digits_run):
    meta = json.loads((digits_run / "model.json").read_text())
    assert meta["format_version"] == FORMAT_VERSION
    assert meta["signature"]["inputs"]["image"]["shape"] == [1, 8, 8]
    assert meta["signature"]["outputs"]["label"]["labels"] == [str(i) for i in range(10)]
    assert meta["features"]["inputs"]["image"]["channels"] == 1
    assert meta["recipe"]["training"]["epochs"] == 3


def test_predict_arrays_paths_and_probabilities_agree(digits_run, digit_images):
    paths, truth, arrays = digit_images
    predictor = dlforge.load(digits_run)
    from_arrays = predictor.predict(arrays)
    from_paths = predictor.predict([str(p) for p in paths])
    assert list(from_arrays) == list(from_paths)
    assert (from_arrays.astype(int) == truth).mean() >= 0.5
    proba = predictor.predict_proba(arrays)
    assert proba.shape == (6, 10) and np.allclose(proba.sum(1), 1, atol=1e-5)
    assert list(np.asarray(predictor.labels())[proba.argmax(1)]) == list(from_arrays)
    single = predictor.predict(arrays[0])  # one image without a batch axis
    assert single[0] == from_arrays[0]
    assert predictor.predict({"image": [str(paths[0])]})[0] == from_arrays[0]


def test_wrong_shape_is_a_clear_error(digits_run):
    predictor = dlforge.load(digits_run)
    with pytest.raises(PredictError, match=r"expects images of 8x8 pixels.*got an array of shape \(2, 5, 5\)"):
        predictor.predict(np.zeros((2, 5, 5), dtype=np.uint8))
    with pytest.raises(PredictError, match="expects image arrays or file paths"):
        predictor.predict(np.array([{"a": 1}], dtype=object))
    with pytest.raises(PredictError, match=r"input\(s\) \['image'\] are missing"):
        predictor.predict({"picture": np.zeros((1, 8, 8))})
    with pytest.raises(DataError, match="image file not found"):
        predictor.predict(["/no/such.png"])


def test_tabular_predictor_accepts_records_dicts_and_frames(tiny_csv, tmp_path):
    run = dlforge.train(tabular_recipe(tiny_csv), out=tmp_path / "r", progress=False)
    predictor = dlforge.load(run.run_dir)
    frame = pd.read_csv(tiny_csv).head(5)
    by_frame = predictor.predict(frame)
    by_records = predictor.predict(frame.to_dict("records"))
    by_dict = predictor.predict({c: frame[c].tolist() for c in frame.columns})
    assert list(by_frame) == list(by_records) == list(by_dict)
    assert set(by_frame) <= {"good", "bad"}
    unseen = predictor.predict({"x1": [0.1], "x2": [None], "color": ["purple"], "flag": ["yes"]})
    assert unseen[0] in ("good", "bad")  # unknown category and NaN go through their policies
    with pytest.raises(PredictError, match=r"records lack input\(s\) \['flag'\]"):
        predictor.predict([{"x1": 1, "x2": 2, "color": "red"}])
    with pytest.raises(DataError, match="non-numeric"):
        predictor.predict({"x1": ["abc"], "x2": [1.0], "color": ["red"], "flag": ["yes"]})
    with pytest.raises(DataError, match="unseen values"):
        predictor.predict({"x1": [1.0], "x2": [1.0], "color": ["red"], "flag": ["maybe"]})


def test_evaluate_on_other_data_refuses_unseen_labels(tiny_csv, tmp_path):
    run = dlforge.train(tabular_recipe(tiny_csv), out=tmp_path / "r", progress=False)
    frame = pd.read_csv(tiny_csv)
    metrics = dlforge.evaluate(run.run_dir, tiny_csv)
    assert 0.5 < metrics["accuracy"] <= 1.0
    frame.loc[0, "target"] = "excellent"
    frame.to_csv(tmp_path / "other.csv", index=False)
    with pytest.raises(DataError, match="unseen values"):
        dlforge.evaluate(run.run_dir, tmp_path / "other.csv")


def test_missing_files_and_newer_versions_are_refused(digits_run, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(digits_run, broken)
    (broken / "model.safetensors").unlink()
    with pytest.raises(ArtifactError, match="missing model.safetensors"):
        dlforge.load(broken)
    newer = tmp_path / "newer"
    shutil.copytree(digits_run, newer)
    meta = json.loads((newer / "model.json").read_text())
    meta["format_version"] = FORMAT_VERSION + 1
    (newer / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match=f"format version {FORMAT_VERSION + 1}"):
        dlforge.load(newer)
    with pytest.raises(ArtifactError, match="no such run directory"):
        dlforge.load(tmp_path / "nothing")


def test_loading_never_unpickles(digits_run):
    import pickle

    original = pickle.Unpickler
    calls = []

    class Spy(original):
        def __init__(self, *a, **k):
            calls.append(1)
            super().__init__(*a, **k)

    pickle.Unpickler = Spy
    try:
        dlforge.load(digits_run).predict(np.zeros((1, 8, 8), dtype=np.uint8))
    finally:
        pickle.Unpickler = original
    assert not calls


def test_interpolation_survives_save_load_predict_and_serving(tmp_path):
    from dlforge.serve.runtime import ModelRuntime, Records

    rng = np.random.default_rng(0)
    rows = ["file,label"]
    for i in range(12):
        Image.fromarray(rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
        rows.append(f"{i}.png,{'a' if i % 2 else 'b'}")
    (tmp_path / "files.csv").write_text("\n".join(rows) + "\n")
    recipe = {"name": "nearest", "data": {"source": str(tmp_path / "files.csv"), "split": {"val": 0.25, "test": 0.0}},
              "inputs": [{"name": "file", "type": "image", "preprocessing": {"size": [5, 5], "interpolation": "nearest"},
                          "encoder": {"name": "cnn", "channels": [4], "padding": "same", "dense": [4]}}],
              "outputs": [{"name": "label", "type": "category"}],
              "training": {"epochs": 1, "batch_size": 8}}
    dlforge.train(recipe, out=tmp_path / "run", progress=False)
    meta = json.loads((tmp_path / "run" / "model.json").read_text())
    assert meta["features"]["inputs"]["file"]["interpolation"] == "nearest"
    assert meta["recipe"]["inputs"][0]["preprocessing"]["interpolation"] == "nearest"

    def resized(name):  # what the model should see for 0.png, resized here with Pillow
        with Image.open(tmp_path / "0.png") as img:
            return np.array(img.convert("RGB").resize((5, 5), getattr(Image.Resampling, name)))[None]

    predictor = dlforge.load(tmp_path / "run")
    from_path = predictor.encode_inputs([str(tmp_path / "0.png")])["file"]
    assert torch.equal(from_path, predictor.encode_inputs(resized("NEAREST"))["file"])
    assert not torch.equal(from_path, predictor.encode_inputs(resized("BILINEAR"))["file"])
    served = ModelRuntime(predictor).encode([Records({"file": [(tmp_path / "0.png").read_bytes()]}, 1)])["file"]
    assert torch.equal(served, from_path)

    # A run directory from before the option (no `interpolation` anywhere) still loads, and resizes bilinear.
    for part in (meta["features"]["inputs"]["file"], meta["recipe"]["inputs"][0]["preprocessing"]):
        del part["interpolation"]
    del meta["content_sha256"]  # such a run also predates model.json's digest of itself
    (tmp_path / "run" / "model.json").write_text(json.dumps(meta))
    old = dlforge.load(tmp_path / "run")
    assert old.inputs["file"].interpolation_ == "bilinear"
    old_path = old.encode_inputs([str(tmp_path / "0.png")])["file"]
    assert torch.equal(old_path, old.encode_inputs(resized("BILINEAR"))["file"])
