"""The learning-rate range test and the frozen-backbone embedding cache."""

from __future__ import annotations


import numpy as np
import pytest
from PIL import Image

import dlforge
from conftest import digits_recipe
from dlforge.cli import main
from dlforge.training.lr_find import suggest


def test_suggestion_is_the_steepest_descent_before_the_minimum():
    lrs = np.logspace(-6, 0, 61)
    loss = np.where(lrs < 1e-3, 2.0, 2.0 - np.log10(lrs / 1e-3))  # flat, then falling, bottom at 1e-1, then up
    loss = np.where(lrs > 1e-1, 0.0 + (np.log10(lrs) + 1) * 10, loss)
    steepest, at_min = suggest(lrs, loss)
    assert at_min == pytest.approx(1e-1, rel=0.2)
    assert 1e-3 <= steepest < 1e-1


@pytest.mark.slow
def test_lr_find_sweeps_saves_plot_and_suggests(tmp_path):
    result = dlforge.lr_find(digits_recipe(), plot=tmp_path / "lr.svg", steps=60)
    assert (tmp_path / "lr.svg").stat().st_size > 1000
    assert result.lrs[0] == pytest.approx(1e-7) and len(result.lrs) == len(result.losses) <= 60
    assert all(b > a for a, b in zip(result.lrs, result.lrs[1:]))  # exponentially rising
    assert 1e-5 < result.suggestion < 1.0  # a small CNN on digits with Adam: somewhere sensible


def test_cli_lr_find_prints_suggestion(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    import yaml

    recipe.write_text(yaml.safe_dump(digits_recipe()))
    main(["lr-find", str(recipe), "--steps", "30", "--plot", str(tmp_path / "p.svg")])
    out = capsys.readouterr().out
    assert "suggested lr:" in out and (tmp_path / "p.svg").is_file()


@pytest.mark.slow
def test_lr_auto_runs_range_test_before_training_and_records_rate(tmp_path):
    recipe = digits_recipe(epochs=1)
    recipe["training"]["optimizer"]["lr"] = "auto"
    run = dlforge.train(recipe, out=tmp_path / "run", progress=False)
    found = run.metrics["lr_find"]["suggestion"]
    saved = (tmp_path / "run" / "recipe.yaml").read_text()
    assert f"lr: {found}" in saved  # the resolved rate is what a resume would use
    assert (tmp_path / "run" / "plots" / "lr_find.svg").is_file()


def _tiny_images(tmp_path, n=12):
    rows = ["file,label"]
    rng = np.random.default_rng(0)
    for i in range(n):
        colour = (200, 30, 30) if i % 2 else (30, 30, 200)
        array = np.clip(rng.normal(0, 20, (40, 48, 3)) + colour, 0, 255).astype(np.uint8)
        Image.fromarray(array).save(tmp_path / f"{i}.png")
        rows.append(f"{i}.png,{'red' if i % 2 else 'blue'}")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    return str(tmp_path / "labels.csv")


def _backbone_recipe(csv, **input_extra):
    return {"name": "tiny-backbone", "data": {"source": csv, "split": {"val": 0.25, "test": 0.0}},
            "inputs": [{"name": "file", "type": "image", "preprocessing": {"size": [32, 32], "resize_shorter": 36},
                        "encoder": {"name": "mobilenet_v2", "dense": [8]}, **input_extra}],
            "outputs": [{"name": "label", "type": "category"}],
            "training": {"epochs": 3, "batch_size": 4, "optimizer": {"name": "adam", "lr": 0.01}}}


@pytest.mark.slow
def test_frozen_backbone_embeddings_are_cached_and_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("DLFORGE_CACHE", str(tmp_path / "cache"))
    csv = _tiny_images(tmp_path)
    first = dlforge.train(_backbone_recipe(csv), out=tmp_path / "a", progress=False)
    assert first.metrics["backbones"]["file"]["path"] == "cached embeddings"
    assert first.metrics["backbones"]["file"]["cache_hits"] == 0
    assert len(list((tmp_path / "cache" / "features").glob("*.safetensors"))) == 2  # train and val
    second = dlforge.train(_backbone_recipe(csv), out=tmp_path / "b", progress=False)
    assert second.metrics["backbones"]["file"]["cache_hits"] == 2
    assert second.metrics["val"]["loss"] == pytest.approx(first.metrics["val"]["loss"], abs=1e-6)
    # The saved model still predicts from raw image files (the cache is a training shortcut only).
    predictor = dlforge.load(tmp_path / "b")
    assert list(predictor.predict([str(tmp_path / "1.png")])) == ["red"]


@pytest.mark.slow
def test_embedding_cache_misses_when_the_resize_filter_changes(tmp_path, monkeypatch):
    # The key hashes the decoded input tensors, so any preprocessing that changes pixels changes it.
    monkeypatch.setenv("DLFORGE_CACHE", str(tmp_path / "cache"))
    recipe = _backbone_recipe(_tiny_images(tmp_path))
    recipe["training"]["epochs"] = 1
    dlforge.train(recipe, out=tmp_path / "a", progress=False)
    recipe["inputs"][0]["preprocessing"]["interpolation"] = "bicubic"
    bicubic = dlforge.train(recipe, out=tmp_path / "b", progress=False)
    assert bicubic.metrics["backbones"]["file"]["cache_hits"] == 0
    assert len(list((tmp_path / "cache" / "features").glob("*.safetensors"))) == 4  # train and val, twice


@pytest.mark.slow
def test_augmentation_or_fine_tuning_bypasses_the_cache_and_plan_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DLFORGE_CACHE", str(tmp_path / "cache"))
    csv = _tiny_images(tmp_path)
    recipe = _backbone_recipe(csv, augmentation={"flip": "horizontal"})
    recipe["training"]["epochs"] = 1
    run = dlforge.train(recipe, out=tmp_path / "a", progress=False)
    assert run.metrics["backbones"]["file"]["path"] == "backbone every step"
    assert "augmentation" in run.metrics["backbones"]["file"]["reason"]
    info = dlforge.plan(_backbone_recipe(csv))
    assert info["backbones"] == {"file": "cached"}
    tuned = _backbone_recipe(csv)
    tuned["inputs"][0]["encoder"]["freeze"] = "none"
    assert "runs every step" in dlforge.plan(tuned)["backbones"]["file"]


@pytest.mark.slow
def test_unfreeze_at_epoch_trains_backbone_only_from_that_epoch(tmp_path, monkeypatch):
    import torch

    monkeypatch.setenv("DLFORGE_CACHE", str(tmp_path / "cache"))
    recipe = _backbone_recipe(_tiny_images(tmp_path))
    recipe["inputs"][0]["encoder"].update({"unfreeze_at_epoch": 2, "backbone_lr_mult": 0.5})
    recipe["training"]["epochs"] = 2
    snapshots = []

    class Watch:
        def on_epoch_end(self, trainer, epoch, metrics):
            weight = trainer.model.encoders["file"].backbone.features[0][0].weight
            snapshots.append((weight.detach().clone(), weight.requires_grad))

    run = dlforge.train(recipe, out=tmp_path / "u", progress=False, callbacks=[Watch()])
    assert run.metrics["backbones"]["file"]["path"] == "backbone every step"
    from dlforge.core.assets import mobilenet_v2_weights

    original = torch.load(mobilenet_v2_weights(), weights_only=True)["features.0.0.weight"]
    assert torch.equal(snapshots[0][0], original) and not snapshots[0][1]  # epoch 1: frozen
    assert not torch.equal(snapshots[1][0], original) and snapshots[1][1]  # epoch 2: fine-tuned
