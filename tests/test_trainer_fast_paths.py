"""The speed options (bf16 autocast, channels-last, constant schedule without per-step stepping) keep behaviour:
they train, resume bit-identically after an interrupt mid-epoch, and predict the same shapes and dtypes."""

from __future__ import annotations


import pytest
import torch
from safetensors.torch import load_file

import dlforge
from dlforge.core.errors import TrainingInterrupted
from conftest import StopAfterSteps, digits_recipe


def _small(**training) -> dict:
    """The tiny digits recipe on 500 rows: 6 steps per epoch, well under a second per run."""
    recipe = digits_recipe(**training)
    recipe["data"]["max_rows"] = 500
    return recipe


def _weights(run_dir) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "model.safetensors"))


@pytest.mark.parametrize("options", [
    {"precision": "bf16"},
    {"precision": "bf16", "channels_last": True},
    {"schedule": {"name": "constant"}},
], ids=["bf16", "bf16-channels_last", "constant-schedule"])
@pytest.mark.slow
def test_fast_options_train_and_resume_bit_identical(tmp_path, options):
    recipe = _small(epochs=2, **options)
    full = dlforge.train(recipe, out=tmp_path / "full", progress=False)
    losses = [row["train.loss"] for row in full.history]
    assert losses[1] < losses[0]  # it learns

    with pytest.raises(TrainingInterrupted):
        # 360 training rows / 64 = 6 steps per epoch: step 8 is in the middle of epoch 2.
        dlforge.train(recipe, out=tmp_path / "cut", progress=False, callbacks=[StopAfterSteps(8)])
    resumed = dlforge.train(resume=tmp_path / "cut", progress=False)

    a, b = _weights(full.run_dir), _weights(resumed.run_dir)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert resumed.history == full.history


def test_bf16_actually_autocasts_the_forward(tmp_path):
    from dlforge.data import prepare
    from dlforge.models import build_model
    from dlforge.recipe.io import load_recipe
    from dlforge.training import Trainer

    recipe = load_recipe(_small(epochs=1, precision="bf16"))
    prepared = prepare(recipe)
    model = build_model(recipe, prepared.signature())
    trainer = Trainer(recipe, model, prepared.splits["train"], None, prepared.signature(), run_dir=tmp_path,
                      progress=False)
    seen = []
    model.encoders["image"].features[0].register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    trainer.predict_logits(prepared.splits["test"])
    assert seen and all(dtype == torch.bfloat16 for dtype in seen)


def test_channels_last_predicts_like_contiguous(tmp_path):
    plain = dlforge.train(_small(epochs=1), out=tmp_path / "plain", progress=False)
    fast = dlforge.train(_small(epochs=1, channels_last=True), out=tmp_path / "cl", progress=False)
    images = torch.rand(5, 8, 8).mul(255).to(torch.uint8).numpy()
    p_plain = dlforge.load(plain.run_dir).predict_proba({"image": images})
    p_fast = dlforge.load(fast.run_dir).predict_proba({"image": images})
    assert type(p_plain) is type(p_fast)
    plain_values, fast_values = _as_array(p_plain), _as_array(p_fast)
    assert plain_values.shape == fast_values.shape == (5, 10)
    assert plain_values.dtype == fast_values.dtype
    # Same seed, same data: the memory format changes the kernels' summation order only.
    assert abs(plain_values - fast_values).max() < 1e-3
    assert fast.metrics["test"]["accuracy"] == pytest.approx(plain.metrics["test"]["accuracy"], abs=0.05)


def _as_array(proba):
    import numpy as np

    if hasattr(proba, "to_numpy"):
        return proba.to_numpy(dtype=float)
    if isinstance(proba, dict):
        proba = next(iter(proba.values()))
        return _as_array(proba)
    return np.asarray(proba, dtype=float)
