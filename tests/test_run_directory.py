"""The run directory is self-sufficient: run.json, evaluation without checkpoint/, loading without weight wheels."""

from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pandas as pd
import pytest

import dlforge
from conftest import tabular_recipe
from dlforge.artifact import format as run_format
from dlforge.core import assets
from dlforge.core.errors import ArtifactError, DlforgeError

WEIGHT_WHEELS = [p.module for b in assets.BACKBONES.values() for p in b.weights]


@pytest.fixture
def run_copy(digits_run, tmp_path):
    """A private copy of the shared digits run, free to damage."""
    return shutil.copytree(digits_run, tmp_path / "copy")


def block_weight_wheels(monkeypatch):
    """Every weight wheel unimportable, and asking assets for one fails the test: loading must read none."""
    for module in WEIGHT_WHEELS:
        monkeypatch.setitem(sys.modules, module, None)
    real = assets.require_package

    def guarded(package, **kwargs):
        assert package.module not in WEIGHT_WHEELS, f"a weight wheel was touched at load: {package.module}"
        return real(package, **kwargs)

    monkeypatch.setattr(assets, "require_package", guarded)


def test_run_json_records_data_split_and_variants(digits_run):
    record = json.loads((digits_run / "run.json").read_text())
    metrics = json.loads((digits_run / "metrics.json").read_text())
    assert record["format_version"] == 1 and record["dlforge_version"] == dlforge.__version__
    assert record["data"]["source"] == "builtin:digits"
    assert record["variants"] == []
    split = record["split"]
    assert (split["seed"], split["val"], split["test"], split["n_rows"]) == (0, 0.1, 0.2, 1797)
    parts = split["parts"]
    assert {p: parts[p]["count"] for p in parts} == metrics["data"]["rows"]  # what training used
    assert sum(len(p["rows"]) for p in parts.values()) == 1797  # every row in exactly one split
    assert len(set().union(*(p["rows"] for p in parts.values()))) == 1797
    for part in parts.values():
        assert part["sha256"] == run_format.rows_sha256(part["rows"])


def test_evaluate_needs_no_checkpoint(run_copy, digits_run):
    shutil.rmtree(run_copy / "checkpoint")  # what the Dockerfile and .dockerignore leave out
    metrics = dlforge.evaluate(run_copy)
    trained = json.loads((digits_run / "metrics.json").read_text())["test"]
    assert metrics["accuracy"] == pytest.approx(trained["accuracy"], abs=1e-6)
    assert metrics["loss"] == pytest.approx(trained["loss"], rel=1e-4)


def test_runs_from_before_run_json_still_evaluate(run_copy):
    expected = dlforge.evaluate(run_copy)["accuracy"]
    (run_copy / "run.json").unlink()  # falls back to checkpoint/meta.json
    assert dlforge.evaluate(run_copy)["accuracy"] == expected
    shutil.rmtree(run_copy / "checkpoint")  # then to '.'
    assert dlforge.evaluate(run_copy)["accuracy"] == expected
    assert list(dlforge.load(run_copy).predict(np.zeros((1, 8, 8), dtype=np.float32)))


def test_changed_data_is_a_clear_error(tiny_csv, tmp_path):
    run = dlforge.train(tabular_recipe(tiny_csv), out=tmp_path / "r", progress=False)
    shutil.rmtree(run.run_dir / "checkpoint")
    assert dlforge.evaluate(run.run_dir)["accuracy"] == pytest.approx(run.metrics["test"]["accuracy"], abs=1e-6)
    frame = pd.read_csv(tiny_csv)
    frame.iloc[::-1].to_csv(tiny_csv, index=False)  # same rows, new order: the test split is other rows now
    with pytest.raises(ArtifactError, match="data changed since training: its train split") as info:
        dlforge.evaluate(run.run_dir)
    assert "--data" in info.value.hint
    frame.iloc[:150].to_csv(tiny_csv, index=False)
    with pytest.raises(ArtifactError, match="it has 150 rows, the run was trained on 200"):
        dlforge.evaluate(run.run_dir)


def test_big_data_keeps_only_hashes_and_counts(tiny_csv, tmp_path, monkeypatch):
    monkeypatch.setattr(run_format, "INLINE_ROWS", 100)  # the tiny table (200 rows) counts as big here
    run = dlforge.train(tabular_recipe(tiny_csv), out=tmp_path / "r", progress=False)
    parts = json.loads((run.run_dir / "run.json").read_text())["split"]["parts"]
    assert all(set(p) == {"count", "sha256"} for p in parts.values())
    assert sum(p["count"] for p in parts.values()) == 200
    assert "accuracy" in dlforge.evaluate(run.run_dir)
    pd.read_csv(tiny_csv).iloc[::-1].to_csv(tiny_csv, index=False)
    with pytest.raises(ArtifactError, match="data changed"):
        dlforge.evaluate(run.run_dir)


@pytest.mark.slow
def test_resume_still_reads_its_checkpoint(tmp_path):
    from conftest import digits_recipe

    first = dlforge.train(digits_recipe(epochs=1), out=tmp_path / "r", progress=False)
    (first.run_dir / "run.json").unlink()
    resumed = dlforge.train(resume=first.run_dir, progress=False)
    assert resumed.metrics["epochs_run"] == 1 and (first.run_dir / "run.json").is_file()


# ---------------------------------------------------------------- pretrained encoders load without their wheels
def _images(tmp_path, n=8):
    from PIL import Image

    rng = np.random.default_rng(0)
    rows = ["file,label"]
    for i in range(n):
        colour = (200, 30, 30) if i % 2 else (30, 30, 200)
        pixels = np.clip(rng.normal(0, 20, (36, 36, 3)) + colour, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(tmp_path / f"{i}.png")
        rows.append(f"{i}.png,{'red' if i % 2 else 'blue'}")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    return [str(tmp_path / f"{i}.png") for i in range(n)]


def _image_run(tmp_path, backbone):
    files = _images(tmp_path)
    recipe = {"name": "tiny", "data": {"source": str(tmp_path / "labels.csv"), "split": {"val": 0.0, "test": 0.25}},
              "inputs": [{"name": "file", "type": "image", "preprocessing": {"size": [32, 32], "resize_shorter": 32},
                          "encoder": {"name": backbone, "dense": [4]}}],
              "outputs": [{"name": "label", "type": "category"}],
              "training": {"epochs": 1, "batch_size": 4}}
    return dlforge.train(recipe, out=tmp_path / "run", progress=False).run_dir, files


def _text_run(tmp_path, encoder: dict):
    texts = ["a fine moving film", "dull and slow", "a joy", "tedious", "bright, warm and funny", "flat"] * 2
    pd.DataFrame({"text": texts, "label": ["pos", "neg"] * 6}).to_csv(tmp_path / "t.csv", index=False)
    recipe = {"name": "tiny-text", "data": {"source": str(tmp_path / "t.csv"), "split": {"val": 0.0, "test": 0.25}},
              "inputs": [{"name": "text", "type": "text", "preprocessing": {"max_length": 8},
                          "encoder": encoder}],
              "outputs": [{"name": "label", "type": "binary"}],
              "training": {"epochs": 1, "batch_size": 4}}
    return dlforge.train(recipe, out=tmp_path / "run", progress=False).run_dir, texts


@pytest.mark.slow
@pytest.mark.parametrize("backbone,extras,code", [
    ("mobilenet_v2", ["serve"], None),
    ("efficientnet_lite0", ["serve", "pretrained"], "efficientnet-lite-pytorch")])
def test_image_backbone_loads_without_its_weight_wheel(tmp_path, monkeypatch, backbone, extras, code):
    monkeypatch.setenv("DLFORGE_CACHE", str(tmp_path / "cache"))
    run_dir, files = _image_run(tmp_path, backbone)
    expected = dlforge.load(run_dir).predict_proba(files)
    trained = json.loads((run_dir / "metrics.json").read_text())["test"]["loss"]
    assert dlforge.evaluate(run_dir)["loss"] == pytest.approx(trained, rel=1e-5)  # the loaded network is the trained one
    block_weight_wheels(monkeypatch)
    assert np.allclose(dlforge.load(run_dir).predict_proba(files), expected, atol=1e-6)
    assert run_format.required_extras(run_dir) == extras
    if code:  # the package that defines the architecture is still needed: its absence names the pip line
        monkeypatch.setitem(sys.modules, code.replace("-", "_"), None)
        with pytest.raises(DlforgeError) as info:
            dlforge.load(run_dir)
        assert f"pip install {code}" in info.value.render()


@pytest.mark.slow  # importing transformers' BERT takes most of its 10+ s on a 2-core machine
def test_minilm_loads_from_model_json_without_the_wheel(tmp_path, monkeypatch):
    monkeypatch.setenv("DLFORGE_CACHE", str(tmp_path / "cache"))
    run_dir, texts = _text_run(tmp_path, {"name": "minilm", "dense": [4], "freeze": "all"})
    meta = json.loads((run_dir / "model.json").read_text())
    assert meta["architectures"]["text"]["hidden_size"] == 384  # the HF config, kept at train time
    assert "_name_or_path" not in meta["architectures"]["text"]  # no path from the training machine
    expected = dlforge.load(run_dir).predict_proba(texts)
    trained = json.loads((run_dir / "metrics.json").read_text())["test"]["loss"]
    assert dlforge.evaluate(run_dir)["loss"] == pytest.approx(trained, rel=1e-5)  # the loaded network is the trained one
    block_weight_wheels(monkeypatch)
    assert np.allclose(dlforge.load(run_dir).predict_proba(texts), expected, atol=1e-5)
    assert run_format.required_extras(run_dir) == ["serve", "text", "pretrained"]
    # The architecture package itself is still needed: its absence names the pip line.
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(DlforgeError) as info:
        dlforge.load(run_dir)
    assert "pip install" in info.value.hint and "transformers" in info.value.hint


def test_missing_packages_at_load_give_the_pip_line(tmp_path, monkeypatch):
    run_dir, texts = _text_run(tmp_path, {"name": "cnn"})
    assert run_format.required_extras(run_dir) == ["serve", "text"]
    monkeypatch.setitem(sys.modules, "tokenizers", None)
    try:
        predictor = dlforge.load(run_dir)  # a state that needs no tokenizers may load: then it must predict
    except DlforgeError as exc:  # never a bare ImportError
        assert "pip install" in exc.render() and "tokenizers" in exc.render()
    else:
        assert len(predictor.predict(texts)) == len(texts)
