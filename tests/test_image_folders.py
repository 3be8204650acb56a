"""Image folders and CSV image-path columns: decoding, mixed modes, bad files, and the streaming path."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import dlforge
from dlforge.cli import main
from dlforge.core.errors import DataError
from conftest import StopAfterSteps, needs_data


def _make_folder(root: Path, *, per_class: int = 12, bad: bool = False) -> Path:
    """Two classes (dark vs bright squares) in train/ and test/, with grey and RGBA files mixed into RGB ones."""
    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("test", 4)):
        for label, base in (("dark", 40), ("bright", 210)):
            folder = root / split / label
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = np.clip(base + rng.normal(0, 20, size=(20, 24, 3)), 0, 255).astype(np.uint8)
                img = Image.fromarray(pixels)
                if i == 0:
                    img = img.convert("L")
                elif i == 1:
                    img = img.convert("RGBA")
                img.save(folder / f"{i}.png")
    if bad:
        (root / "train" / "dark" / "broken.jpg").write_bytes(b"not an image at all")
    (root / "train" / "dark" / "notes.txt").write_text("ignored, and reported")
    return root


def _recipe(source, **data) -> dict:
    return {"name": "folder", "data": {"source": str(source), "split": {"val": 0.2, "seed": 0}, **data},
            "inputs": [{"name": "image", "type": "image", "preprocessing": {"size": [16, 16]},
                        "encoder": {"name": "cnn", "channels": [4], "padding": "same", "dense": [8]}}],
            "outputs": [{"name": "label", "type": "category"}],
            "training": {"epochs": 3, "batch_size": 8, "optimizer": {"name": "adam", "lr": 0.01}}}


def test_folder_reads_mixed_modes_converts_and_counts(tmp_path):
    folder = _make_folder(tmp_path / "imgs")
    result = dlforge.train(_recipe(folder), out=tmp_path / "run", progress=False)
    images = result.metrics["data"]["images"]["image"]
    # 2 classes x 2 splits x (1 grey + 1 RGBA) converted to RGB
    assert images["converted_to_rgb"] == 8
    assert images["path"] == "in_memory"
    assert result.metrics["data"]["rows"]["test"] == 8  # official test/ folder
    assert any("non-image" in n for n in result.metrics["data"]["notes"])
    assert result.metrics["test"]["accuracy"] >= 0.75
    # predicting from files decodes them exactly as training did
    predictor = dlforge.load(result.run_dir)
    assert list(predictor.predict([str(folder / "test" / "bright" / "0.png")])) == ["bright"]


def test_bad_file_errors_by_default_naming_it(tmp_path):
    folder = _make_folder(tmp_path / "imgs", bad=True)
    with pytest.raises(DataError) as err:
        dlforge.train(_recipe(folder), out=tmp_path / "run", progress=False)
    assert "broken.jpg" in err.value.message and "on_bad_file" in err.value.where


def test_bad_file_skip_counts_it(tmp_path):
    folder = _make_folder(tmp_path / "imgs", bad=True)
    recipe = _recipe(folder)
    recipe["inputs"][0]["preprocessing"]["on_bad_file"] = "skip"
    result = dlforge.train(recipe, out=tmp_path / "run", progress=False)
    assert result.metrics["data"]["images"]["image"]["skipped_bad_files"] == 1
    assert sum(result.metrics["data"]["rows"].values()) == 32


def test_bad_file_cli_exit_code_2(tmp_path, capsys):
    import yaml

    folder = _make_folder(tmp_path / "imgs", bad=True)
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(_recipe(folder)))
    with pytest.raises(SystemExit) as exit_info:
        main(["train", str(path), "--out", str(tmp_path / "run"), "-q"])
    assert exit_info.value.code == 2
    assert "broken.jpg" in capsys.readouterr().err


@pytest.mark.slow
def test_streaming_matches_in_memory_and_caches(tmp_path):
    folder = _make_folder(tmp_path / "imgs")
    memory = dlforge.train(_recipe(folder), out=tmp_path / "mem", progress=False)
    cache = tmp_path / "cache"
    stream = dlforge.train(_recipe(folder, in_memory=False, workers=1, cache_dir=str(cache)),
                           out=tmp_path / "stream", progress=False)
    assert stream.metrics["data"]["images"]["image"]["path"] == "streaming"
    assert [h["train.loss"] for h in stream.history] == pytest.approx([h["train.loss"] for h in memory.history], abs=1e-6)
    done = np.load(next(cache.glob("*/done.npy")))
    assert done.all()  # every training/val/test image decoded once and cached


def test_streaming_decodes_like_in_memory_with_crop_and_interpolation(tmp_path):
    from dataclasses import replace

    from dlforge.data.prepare import prepare
    from dlforge.data.images.streaming import cache_key
    from dlforge.recipe.io import load_recipe

    folder = _make_folder(tmp_path / "imgs")
    recipe = _recipe(folder)
    recipe["inputs"][0]["preprocessing"].update(fit="crop", resize_shorter=18, interpolation="bicubic")
    memory = prepare(load_recipe(recipe))
    stream = prepare(load_recipe({**recipe, "data": {**recipe["data"], "in_memory": False, "workers": 0,
                                                     "cache_dir": str(tmp_path / "cache")}}))
    lazy = stream.splits["train"].x["image"]
    assert lazy.plan.interpolation == "bicubic" and lazy.plan.shorter == 18
    assert torch.equal(lazy[np.arange(len(lazy))], memory.splits["train"].x["image"])
    # Decoded images cached with other settings are never reused.
    keys = {cache_key(lazy.paths, replace(lazy.plan, **change))
            for change in ({}, {"interpolation": "bilinear"}, {"shorter": 20})}
    assert len(keys) == 3


def test_auto_streams_over_memory_budget(tmp_path):
    from dlforge.data.prepare import prepare
    from dlforge.recipe.io import load_recipe

    folder = _make_folder(tmp_path / "imgs")
    recipe = _recipe(folder, memory_budget_mb=1)
    recipe["inputs"][0]["preprocessing"]["size"] = [256, 256]  # 40 images x 3x256x256 float32 = 30 MB > 1 MB
    prepared = prepare(load_recipe(recipe))
    assert prepared.report["images"]["image"]["path"] == "streaming"


def test_csv_image_paths_relative_to_csv(tmp_path):
    folder = _make_folder(tmp_path / "data" / "imgs")
    rows = [{"file": str(p.relative_to(tmp_path / "data")), "label": p.parent.name}
            for p in sorted(folder.glob("train/*/*.png"))]
    pd.DataFrame(rows).to_csv(tmp_path / "data" / "files.csv", index=False)
    recipe = _recipe(tmp_path / "data" / "files.csv")
    recipe["inputs"][0]["name"] = "file"
    result = dlforge.train(recipe, out=tmp_path / "run", progress=False)
    assert sum(result.metrics["data"]["rows"].values()) == 24


def test_different_sizes_need_a_size(tmp_path):
    folder = _make_folder(tmp_path / "imgs")
    Image.new("RGB", (50, 40)).save(folder / "train" / "dark" / "big.png")
    recipe = _recipe(folder)
    del recipe["inputs"][0]["preprocessing"]["size"]
    with pytest.raises(DataError, match="different sizes") as err:
        dlforge.train(recipe, out=tmp_path / "run", progress=False)
    assert "preprocessing.size" in err.value.where


@needs_data("tuxpaint_photos")
def test_builtin_tuxpaint_photos_is_an_image_folder():
    from dlforge.data.readers import load_table

    table = load_table("builtin:tuxpaint_photos")
    assert table.n_rows == 187 and (table.split == "test").sum() == 46
    assert sorted(set(table.columns["label"])) == ["bird", "flower", "fruit", "mammal", "vegetable", "vehicle"]


def test_streaming_resume_is_exact(tmp_path):
    from dlforge.core.errors import TrainingInterrupted

    folder = _make_folder(tmp_path / "imgs")
    recipe = _recipe(folder, in_memory=False, workers=0, cache_dir=str(tmp_path / "cache"))
    straight = dlforge.train(recipe, out=tmp_path / "straight", progress=False)
    with pytest.raises(TrainingInterrupted):
        dlforge.train(recipe, out=tmp_path / "resumed", progress=False, callbacks=[StopAfterSteps(4)])  # mid-epoch 2
    resumed = dlforge.train(resume=tmp_path / "resumed", progress=False)
    assert [h["train.loss"] for h in resumed.history] == [h["train.loss"] for h in straight.history]


def test_skipped_bad_files_are_printed_not_only_recorded(tmp_path, capsys):
    import yaml

    folder = _make_folder(tmp_path / "imgs", bad=True)
    recipe = _recipe(folder)
    recipe["inputs"][0]["preprocessing"]["on_bad_file"] = "skip"
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    main(["recipe", "check", str(path)])
    out = capsys.readouterr().out
    assert "warning: image: skipped 1 image file(s) that do not decode (on_bad_file: skip), e.g. " in out
    assert "broken.jpg" in out
