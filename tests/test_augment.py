"""Batch augmentation: each transform's effect, determinism under the seed, mixing labels, exact resume."""

from __future__ import annotations


import pytest
import torch
from safetensors.torch import load_file

import dlforge
from conftest import InterruptAt, digits_recipe
from dlforge.data.augment import BatchAugmenter, ImageAugment, TokenDropout
from dlforge.core.errors import TrainingInterrupted
from dlforge.recipe import ImageAugmentation


def _aug(**options):
    return ImageAugment(ImageAugmentation(**options), scale="unit", mean=[0, 0, 0], std=[1, 1, 1])


def test_flip_mirrors_some_samples_and_leaves_the_rest():
    x = torch.rand(32, 3, 8, 8)
    out = _aug(flip="horizontal")(x, torch.Generator().manual_seed(0))
    flipped = torch.isclose(out, x.flip(-1), atol=1e-5).flatten(1).all(1)
    same = torch.isclose(out, x, atol=1e-5).flatten(1).all(1)
    assert bool((flipped | same).all()) and 0 < int(flipped.sum()) < 32


def test_shift_with_zero_fill_moves_content():
    x = torch.ones(16, 1, 10, 10)
    out = _aug(width_shift=0.3, fill="zeros")(x, torch.Generator().manual_seed(1))
    blank_cols = (out.abs() < 1e-6).all(2).squeeze(1).sum(1)  # (B,) columns emptied by the shift
    assert int(blank_cols.max()) >= 1 and out.shape == x.shape


def test_geometry_is_deterministic_under_the_generator():
    x = torch.rand(4, 3, 16, 16)
    options = dict(rotation=30, shear=10, zoom=0.2, width_shift=0.1, height_shift=0.1,
                   random_resized_crop={"scale": (0.5, 1.0)}, brightness=0.3, contrast=0.3, saturation=0.3, cutout=0.25)
    a = _aug(**options)(x, torch.Generator().manual_seed(7))
    b = _aug(**options)(x, torch.Generator().manual_seed(7))
    c = _aug(**options)(x, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_colour_jitter_works_in_pixel_space_of_imagenet_scaling():
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    aug = ImageAugment(ImageAugmentation(brightness=0.9), scale="imagenet", mean=mean, std=std)
    pixels = torch.full((64, 3, 2, 2), 0.9)
    x = (pixels - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    out = aug(x, torch.Generator().manual_seed(0)) * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1)
    assert float(out.max()) <= 1.0 + 1e-5 and float(out.min()) >= 0.0  # clamped to valid pixels
    assert float(out.std()) > 0.1  # brightness really varies across samples


def test_cutout_blanks_a_square_of_the_given_side():
    x = torch.ones(64, 1, 20, 20)
    out = _aug(cutout=0.5)(x, torch.Generator().manual_seed(0))
    holes = (out == 0).flatten(1).sum(1)
    assert int(holes.max()) == 100  # a full 10x10 square when it lies inside the image
    assert int(holes.min()) >= 0


def test_mixup_returns_partner_and_weight_and_blends():
    x = {"img": torch.rand(8, 3, 4, 4)}
    aug = BatchAugmenter({}, mixup=0.4, cutmix=0.0, mixed=["img"], seed=0)
    out, (perm, lam) = aug(dict(x))
    assert 0.0 <= lam <= 1.0
    assert torch.allclose(out["img"], lam * x["img"] + (1 - lam) * x["img"][perm])


def test_cutmix_weight_is_the_kept_area():
    x = {"img": torch.zeros(8, 1, 10, 10)}
    x["img"][4:] = 1.0
    aug = BatchAugmenter({}, mixup=0.0, cutmix=1.0, mixed=["img"], seed=3)
    out, (perm, lam) = aug(dict(x))
    changed = (out["img"] != x["img"]).flatten(1).float().mean(1)
    moved = (x["img"] != x["img"][perm]).flatten(1).all(1)
    assert torch.allclose(changed[moved], torch.full_like(changed[moved], 1 - lam))


def test_token_dropout_spares_padding_and_specials():
    ids = torch.tensor([[101, 5, 6, 7, 102, 0, 0]] * 50)
    out = TokenDropout(0.5, unk_id=100, keep_ids=[0, 101, 102])(ids, torch.Generator().manual_seed(0))
    assert torch.equal(out[:, [0, 4, 5, 6]], ids[:, [0, 4, 5, 6]])
    dropped = (out[:, 1:4] == 100).float().mean()
    assert 0.3 < float(dropped) < 0.7


def test_no_augmentation_declared_means_no_augmenter():
    from dlforge.data.augment import build_augmenter
    from dlforge.recipe.io import load_recipe

    assert build_augmenter(load_recipe(digits_recipe()), {}) is None


def _aug_digits(tmp_path, name, callbacks=()):
    recipe = digits_recipe(epochs=2, checkpoint_every_steps=5)
    recipe["inputs"][0]["augmentation"] = {"rotation": 15, "zoom": 0.1, "cutout": 0.2, "mixup": 0.2, "cutmix": 0.2}
    return dlforge.train(recipe, out=tmp_path / name, progress=False, callbacks=callbacks)


@pytest.mark.slow
def test_augmented_training_resumes_bit_exactly(tmp_path):
    whole = _aug_digits(tmp_path, "whole")
    with pytest.raises(TrainingInterrupted):
        _aug_digits(tmp_path, "cut", callbacks=[InterruptAt(7)])
    resumed = dlforge.train(resume=tmp_path / "cut", progress=False)
    a = load_file(str(whole.run_dir / "model.safetensors"))
    b = load_file(str(resumed.run_dir / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert whole.metrics["test"]["accuracy"] == resumed.metrics["test"]["accuracy"]
