"""The `scatter` image encoder (kymatio's Scattering2D + GroupNorm + a small CNN; Tramer & Boneh 2021): its
shapes and values, that the transform has no trainable weight and never reaches the optimizer, that DP-SGD on it
trains the head on cached scattering features and spends exactly the accountant's epsilon, and that a missing
kymatio is one clear error naming the extra."""

from __future__ import annotations


import numpy as np
import pytest
import torch
from conftest import digits_recipe, main_ok, without_module
from safetensors.torch import load_file

import dlforge
from dlforge.artifact.format import required_extras
from dlforge.core.errors import DlforgeError

pytest.importorskip("kymatio")


class _Reg:
    dropout = 0.0
    dropconnect = 0.0


def _encoder(**options):
    from dlforge.models.encoders.scatter import ScatterEncoder
    from dlforge.recipe.encoders import ScatterEncoder as Config

    return ScatterEncoder(Config(**options), {"shape": (1, 28, 28)}, _Reg())


def test_mnist_sized_image_gives_81_channels_of_7x7_and_only_the_head_trains():
    from kymatio.scattering2d.frontend.torch_frontend import ScatteringTorch2D

    from dlforge.training.optim import parameter_groups

    torch.manual_seed(0)
    encoder = _encoder()  # Tramer & Boneh's MNIST model: J 2, L 8, GroupNorm 27, conv 16 s2 - conv 32 - dense 32
    x = torch.rand(5, 1, 28, 28)
    features = encoder.embed(x)
    assert (encoder.map_channels, encoder.map_h, encoder.map_w) == (81, 7, 7) and features.shape == (5, 81 * 49)
    assert torch.allclose(features, ScatteringTorch2D(J=2, shape=(28, 28), L=8)(x).reshape(5, -1), atol=1e-6)
    assert encoder(x).shape == (5, 32) and encoder.output_dim == 32
    # The transform: buffers only; the head: 81*16*9+16 + 16*32*9+32 + 512*32+32 weights.
    assert list(encoder.backbone.parameters()) == [] and len(list(encoder.backbone.buffers())) > 0
    assert sum(p.numel() for p in encoder.parameters() if p.requires_grad) == 11_680 + 4_640 + 16_416
    in_optimizer = {id(p) for g in parameter_groups(encoder, 0.1) for p in g["params"]}
    assert in_optimizer == {id(p) for p in encoder.head.parameters()}
    # GroupNorm without affine weights: each image normalised alone (no statistics shared across a batch).
    assert not encoder.norm.affine and encoder.norm.num_groups == 27
    assert torch.allclose(encoder(x[:1]), encoder(x)[:1], atol=1e-6)
    # The cached path (features computed once) gives the raw path's output.
    raw = encoder(x)
    encoder.cached_input = True
    assert torch.allclose(encoder(features), raw, atol=1e-6)


def test_no_conv_blocks_and_no_dense_layer_is_scatternet_plus_linear():
    encoder = _encoder(channels=[], stride=1, dense=[], norm_groups=81)
    assert encoder.output_dim == 81 * 49 and sum(p.numel() for p in encoder.parameters()) == 0


@pytest.mark.parametrize("options, words", [({"norm_groups": 10}, "does not divide the 81"),
                                            ({"J": 4}, "too small for J=4")])
def test_bad_options_are_model_errors_naming_the_option(options, words):
    with pytest.raises(DlforgeError, match=words):
        _encoder(**options)


def _scatter_dp_recipe(**training) -> dict:
    recipe = digits_recipe(epochs=2, batch_size=64, **training)
    recipe["inputs"][0]["encoder"] = {"name": "scatter", "J": 1, "L": 8, "norm_groups": 3, "channels": [8],
                                      "stride": 1, "dense": []}
    recipe["training"].update({"optimizer": {"name": "sgd", "lr": 0.5, "momentum": 0.9},
                               "privacy": {"epsilon": 4.0, "delta": 1e-4, "max_grad_norm": 0.5}})
    return recipe


@pytest.mark.slow
def test_dp_training_fits_the_head_on_cached_scattering_and_spends_the_accountants_epsilon(tmp_path, monkeypatch,
                                                                                         capsys):
    pytest.importorskip("opacus")
    from opacus.accountants import RDPAccountant

    monkeypatch.setenv("DLFORGE_CACHE", str(tmp_path / "cache"))
    result = dlforge.train(_scatter_dp_recipe(), out=tmp_path / "run", progress=False)
    assert result.metrics["backbones"]["image"]["path"] == "cached embeddings"
    assert result.metrics["backbones"]["image"]["dim"] == 9 * 4 * 4  # J 1: 1 + 8 paths of 4x4 for an 8x8 image
    assert len(list((tmp_path / "cache" / "features").glob("*.safetensors"))) == 3  # train, val, test: once each
    p = result.metrics["privacy"]
    accountant = RDPAccountant()
    for _ in range(p["steps"]):
        accountant.step(noise_multiplier=p["noise_multiplier"], sample_rate=p["sample_rate"])
    assert p["epsilon"] == pytest.approx(accountant.get_epsilon(delta=1e-4), abs=1e-6)
    assert 3.9 < p["epsilon"] <= 4.0
    # The saved filters are kymatio's, untouched by the noisy steps (they are buffers, not parameters).
    from kymatio.scattering2d.frontend.torch_frontend import ScatteringTorch2D

    saved = load_file(str(result.run_dir / "model.safetensors"))
    fresh = ScatteringTorch2D(J=1, shape=(8, 8), L=8).state_dict()
    assert fresh and all(torch.equal(saved[f"encoders.image.backbone.{k}"], v) for k, v in fresh.items())
    assert result.metrics["test"]["accuracy"] > 0.5  # 10 classes: well above chance after 2 noisy epochs
    # The saved model runs the transform on raw images again (the cache was a training-time shortcut).
    predictions = dlforge.load(result.run_dir).predict({"image": np.zeros((2, 8, 8))})
    assert len(predictions) == 2
    assert "scatter" in required_extras(result.run_dir)  # serving it needs kymatio: the Dockerfile's extras say so
    # ONNX: refused in one message naming the operator and the fallback, before either exporter runs.
    pytest.importorskip("onnx")
    assert not main_ok(["export", str(result.run_dir)])
    err = capsys.readouterr().err
    assert "aten::view_as_complex" in err and "--runtime torch" in err and not (result.run_dir / "model.onnx").exists()


def test_missing_kymatio_is_one_error_naming_the_scatter_extra(tmp_path, monkeypatch):
    without_module(monkeypatch, "kymatio")
    with pytest.raises(DlforgeError, match="needs kymatio") as info:
        dlforge.train(_scatter_dp_recipe(), out=tmp_path / "run", progress=False)
    assert "dlforge[scatter]" in info.value.hint
    assert not (tmp_path / "run" / "model.json").exists()
