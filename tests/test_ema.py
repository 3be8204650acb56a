"""The ema callback (training/callbacks/ema.py): the final weights are the exponential moving average of the
iterates, with the warm-up; a resumed run ends with the same average; bad settings are recipe errors."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

import dlforge
from dlforge import RecipeError, TrainingInterrupted
from conftest import InterruptAt, digits_recipe


def _small(**training) -> dict:
    recipe = digits_recipe(**training)
    recipe["data"]["max_rows"] = 500  # 360 training rows: 6 steps of 64 per epoch
    return recipe


class Iterates:
    """Keeps a copy of the weights after every optimizer step (and the initial ones)."""

    def __init__(self):
        self.seen: list[dict[str, torch.Tensor]] = []

    def on_fit_start(self, trainer):
        self.seen.append({k: p.detach().clone() for k, p in trainer.model.named_parameters()})

    def on_step_end(self, trainer, step):
        self.seen.append({k: p.detach().clone() for k, p in trainer.model.named_parameters()})


@pytest.mark.parametrize("accumulate", [1, 4])
def test_final_weights_are_the_moving_average_of_the_iterates_with_warm_up(tmp_path, accumulate):
    iterates = Iterates()
    decay = 0.9
    run = dlforge.train(_small(epochs=2, accumulate=accumulate, callbacks=[{"name": "ema", "decay": decay}]),
                        out=tmp_path / "r", progress=False, callbacks=[iterates])
    # Only the optimizer's steps move the average: with accumulation 4 over 6 batches, steps end at batches 4 and 6.
    updates = [w for i, w in enumerate(iterates.seen[1:]) if accumulate == 1 or i % 6 in (3, 5)]
    assert len(updates) == (12 if accumulate == 1 else 4)
    expected = dict(iterates.seen[0])
    for t, weights in enumerate(updates, start=1):
        d = min(decay, (1 + t) / (10 + t))
        expected = {k: d * expected[k] + (1 - d) * weights[k] for k in expected}
    saved = load_file(str(run.run_dir / "model.safetensors"))
    for name, value in expected.items():
        assert torch.allclose(saved[name], value, atol=1e-6), name
    last = updates[-1]
    assert any(not torch.allclose(saved[k], last[k]) for k in last)  # not simply the last iterate


@pytest.mark.slow
def test_a_resumed_run_ends_with_the_same_average(tmp_path):
    recipe = _small(epochs=3, checkpoint_every_steps=4, callbacks=[{"name": "ema", "decay": 0.8}])
    whole = dlforge.train(recipe, out=tmp_path / "whole", progress=False)
    with pytest.raises(TrainingInterrupted):
        dlforge.train(recipe, out=tmp_path / "cut", progress=False, callbacks=[InterruptAt(step=2, epoch=1)])
    resumed = dlforge.train(resume=tmp_path / "cut", progress=False)
    a = load_file(str(whole.run_dir / "model.safetensors"))
    b = load_file(str(resumed.run_dir / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert whole.metrics["test"]["accuracy"] == resumed.metrics["test"]["accuracy"]


@pytest.mark.parametrize("training, message", [
    ({"callbacks": [{"name": "ema", "decay": 1.0}]}, "ema decay must be a number strictly between 0 and 1, got 1.0"),
    ({"callbacks": [{"name": "ema", "decay": "high"}]}, "got 'high'"),
    ({"callbacks": [{"name": "ema"}], "early_stopping": {"metric": "val.accuracy", "patience": 2}},
     "training.early_stopping: cannot be combined with the ema callback"),
])
def test_bad_ema_settings_are_recipe_errors_exiting_2(tmp_path, training, message, cli):
    import yaml

    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(_small(epochs=1, **training)))
    code, out, err = cli("train", path, "--out", tmp_path / "r")
    assert code == 2
    assert message in out + err
    assert not (tmp_path / "r").exists()  # refused before any data is read or directory written
    with pytest.raises(RecipeError, match="ema"):
        dlforge.train(_small(epochs=1, **training), out=tmp_path / "lib", progress=False)
    assert not (tmp_path / "lib").exists()
