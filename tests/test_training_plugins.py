"""Trainer plugins change training without editing the trainer: a callback chosen by name in the recipe, a
strategy, a loss hook, a model transform; gradient accumulation; the library leaves signals to its caller."""

from __future__ import annotations

import copy
import os
import signal
import threading

import pytest
import torch
from safetensors.torch import load_file

import dlforge
from dlforge import RecipeError, TrainingInterrupted
from dlforge.data import prepare
from dlforge.recipe.io import load_recipe
from dlforge.training.callbacks import Callback, callbacks
from dlforge.training.setup import build_training
from dlforge.training.strategy import SingleDevice, strategies
from conftest import InterruptAt, digits_recipe, tabular_recipe

EVENTS: list = []


@callbacks.register("test_recorder")
class Recorder(Callback):
    """Records every hook it receives, and votes to stop at the end of epoch `stop_at` (1-based)."""

    def __init__(self, *, stop_at: int | None = None):
        self.stop_at = stop_at

    def on_fit_start(self, trainer):
        EVENTS.append(("fit_start",))

    def on_epoch_start(self, trainer, epoch):
        EVENTS.append(("epoch_start", epoch))

    def on_step_end(self, trainer, step):
        EVENTS.append(("step", step))

    def on_epoch_end(self, trainer, epoch, metrics):
        EVENTS.append(("epoch_end", epoch))
        return self.stop_at is not None and epoch + 1 >= self.stop_at

    def on_fit_end(self, trainer, result):
        EVENTS.append(("fit_end", result.epochs_run))

    def on_run_end(self, trainer, run_dir):
        EVENTS.append(("run_end", (run_dir / "model.safetensors").is_file(), (run_dir / "metrics.json").is_file()))


class CountingStrategy(SingleDevice):
    def __init__(self, *, channels_last: bool = False):
        super().__init__("cpu", channels_last=channels_last)
        self.setup_calls = 0

    def setup(self, model, optimizer, batches):
        self.setup_calls += 1
        return model, optimizer, batches


strategies.register("test_counting")(CountingStrategy)


def _small(**training) -> dict:
    recipe = digits_recipe(**training)
    recipe["data"]["max_rows"] = 500  # 360 training rows: 6 steps of 64 per epoch
    return recipe


def _build(recipe: dict, tmp_path, **plugins):
    recipe = load_recipe(recipe)
    return build_training(recipe, prepare(recipe), run_dir=tmp_path, **plugins)


def test_a_callback_named_in_the_recipe_gets_every_hook_in_order_and_stops_training(tmp_path):
    EVENTS.clear()
    run = dlforge.train(_small(epochs=5, callbacks=[{"name": "test_recorder", "stop_at": 2}]), out=tmp_path / "r",
                        progress=False)
    assert run.metrics["epochs_run"] == 2 and run.metrics["stopped_early"] is True
    steps = [("step", i) for i in range(6)]
    assert EVENTS == [("fit_start",), ("epoch_start", 0), *steps, ("epoch_end", 0),
                      ("epoch_start", 1), *steps, ("epoch_end", 1), ("fit_end", 2), ("run_end", True, True)]


def test_default_hooks_of_the_base_class_are_not_called():
    from dlforge.training.callbacks import resolve_hooks

    class OnlyEpochs(Callback):
        def on_epoch_end(self, trainer, epoch, metrics):
            return False

    hooks = resolve_hooks([OnlyEpochs()])
    assert [name for name, fns in hooks.items() if fns] == ["on_epoch_end"]


@pytest.mark.parametrize("entry, message", [
    ("test_recorderr", "training.callbacks.0: unknown callback 'test_recorderr' — did you mean 'test_recorder'?"),
    ({"name": "test_recorder", "stop_after": 2}, "training.callbacks.0: callback 'test_recorder' got an unexpected "
                                                 "keyword argument 'stop_after' (it takes: stop_at)"),
])
def test_unknown_callback_names_and_options_are_recipe_errors(tmp_path, entry, message):
    with pytest.raises(RecipeError) as info:
        dlforge.train(_small(callbacks=[entry]), out=tmp_path / "r", progress=False)
    assert message in str(info.value)
    assert not (tmp_path / "r").exists()  # checked before any data is read or directory written


def test_callbacks_field_type_default_and_shape():
    assert load_recipe(_small()).training.callbacks == []
    with pytest.raises(RecipeError, match="training.callbacks"):
        load_recipe(_small(callbacks=[{"stop_at": 2}]))  # an entry without a name


@pytest.mark.slow
def test_a_strategy_is_set_up_exactly_once_and_owns_the_device(tmp_path):
    strategy = CountingStrategy()
    built = _build(_small(epochs=2), tmp_path, strategy=strategy)
    built.trainer.fit()
    assert strategy.setup_calls == 1
    assert built.trainer.device == torch.device("cpu")
    by_name = _build(_small(epochs=1), tmp_path, strategy="test_counting")
    assert isinstance(by_name.trainer.strategy, CountingStrategy) and by_name.trainer.strategy.setup_calls == 1


def test_the_frozen_feature_cache_embeds_on_the_strategys_device(tmp_path, monkeypatch):
    import importlib

    class Called(Exception):
        pass

    def record(recipe, model, splits, *, device):
        raise Called(device)

    monkeypatch.setattr(importlib.import_module("dlforge.training.setup"), "apply_feature_cache", record)
    strategy = CountingStrategy()
    strategy.device = torch.device("meta")  # a device no default would pick: it can only come from the strategy
    recipe = load_recipe(_small())
    with pytest.raises(Called) as info:
        build_training(recipe, prepare(recipe), run_dir=tmp_path, strategy=strategy)
    assert info.value.args == (torch.device("meta"),)


@pytest.mark.slow
def test_a_loss_hook_shifts_the_logged_loss_by_exactly_its_term(tmp_path):
    plain = _build(_small(epochs=2), tmp_path / "a")
    shifted = _build(_small(epochs=2), tmp_path / "b",
                     loss_hooks=(lambda trainer, logits, targets, loss: loss + 0.25,))
    a, b = plain.trainer.fit(), shifted.trainer.fit()
    for row_a, row_b in zip(a.history, b.history):
        assert row_b["train.loss"] == pytest.approx(row_a["train.loss"] + 0.25, abs=1e-6)
        assert row_b["val.loss"] == row_a["val.loss"]  # a constant has no gradient: the same weights
    for (name, p), q in zip(plain.model.named_parameters(), shifted.model.parameters()):
        assert torch.equal(p, q), name


def test_a_model_transform_runs_before_the_optimizer_is_built(tmp_path):
    originals = []

    def transform(model):
        originals.append(model)
        return copy.deepcopy(model)  # a new module: the optimizer must hold its parameters, not the original's

    built = _build(_small(epochs=1), tmp_path, model_transforms=(transform,))
    optimized = {id(p) for group in built.trainer.optimizer.param_groups for p in group["params"]}
    assert built.model is built.trainer.model and built.model is not originals[0]
    assert optimized == {id(p) for p in built.model.parameters() if p.requires_grad}
    assert not optimized & {id(p) for p in originals[0].parameters()}
    before = [p.detach().clone() for p in built.model.parameters()]
    built.trainer.fit()
    assert any(not torch.equal(b, p) for b, p in zip(before, built.model.parameters()))


@pytest.mark.slow
def test_accumulating_two_batches_of_32_updates_like_one_batch_of_64(tiny_csv, tmp_path):
    def recipe(**training):
        r = tabular_recipe(tiny_csv)  # an MLP: no batch-norm, no dropout
        r["data"]["split"] = {"val": 0.1, "test": 0.05, "seed": 0}  # 170 training rows: 2 x 64 + 42
        r["training"] = {"epochs": 3, "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
                         "schedule": {"name": "onecycle"}, **training}
        return r

    big = _build(recipe(batch_size=64), tmp_path / "big")
    small = _build(recipe(batch_size=32, accumulate=2), tmp_path / "small")
    n = small.trainer.batches.n_rows
    assert n % 64 > 32, f"{n} rows: the last group should hold a full and a partial batch of 32"
    assert big.trainer.updates_per_epoch == small.trainer.updates_per_epoch == len(big.trainer.batches)
    a, b = big.trainer.fit(), small.trainer.fit()
    for (name, p), q in zip(big.model.named_parameters(), small.model.parameters()):
        assert torch.allclose(p, q, atol=1e-6), name
    assert [r["lr"] for r in a.history] == pytest.approx([r["lr"] for r in b.history])


@pytest.mark.slow
def test_accumulated_training_resumes_bit_identically_inside_a_group(tmp_path):
    recipe = _small(epochs=2, batch_size=32, accumulate=3)  # 12 batches an epoch, 4 updates
    full = dlforge.train(recipe, out=tmp_path / "full", progress=False)
    with pytest.raises(TrainingInterrupted):
        dlforge.train(recipe, out=tmp_path / "cut", progress=False, callbacks=[InterruptAt(step=4, epoch=1)])
    state = torch.load(tmp_path / "cut" / "checkpoint" / "state.pt", weights_only=True)
    assert state["step"] == 5 and state["grads"]  # two of a group's three batches done: their gradients saved
    resumed = dlforge.train(resume=tmp_path / "cut", progress=False)
    a, b = load_file(str(full.run_dir / "model.safetensors")), load_file(str(resumed.run_dir / "model.safetensors"))
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert resumed.history == full.history


def test_the_library_leaves_the_callers_signal_handlers_alone(tmp_path):
    received = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))
    sigint_before = signal.getsignal(signal.SIGINT)

    class SendSigterm(Callback):
        def on_step_end(self, trainer, step):
            if step == 2 and not received:
                os.kill(os.getpid(), signal.SIGTERM)
                assert signal.getsignal(signal.SIGINT) is sigint_before  # nothing installed during training

    try:
        run = dlforge.train(_small(epochs=2), out=tmp_path / "r", progress=False, callbacks=[SendSigterm()])
        assert received == [signal.SIGTERM]  # the caller's handler got it, training was not interrupted
        assert run.metrics["epochs_run"] == 2
        assert signal.getsignal(signal.SIGINT) is sigint_before
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_a_stop_request_from_the_caller_checkpoints_and_interrupts(tmp_path):
    stop = threading.Event()  # any object with is_set() will do; the CLI passes a StopRequest

    class SetAfterThree(Callback):
        def on_step_end(self, trainer, step):
            if step == 2:
                stop.set()

    with pytest.raises(TrainingInterrupted):
        dlforge.train(_small(epochs=2), out=tmp_path / "r", progress=False, stop=stop, callbacks=[SetAfterThree()])
    assert torch.load(tmp_path / "r" / "checkpoint" / "state.pt", weights_only=True)["step"] == 3


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_smoke_one_epoch_on_cuda(tmp_path):
    built = _build(_small(epochs=1), tmp_path)
    assert built.trainer.device.type == "cuda"
    assert all(p.device.type == "cuda" for p in built.model.parameters())
    assert all(t.device.type == "cuda" for t in built.trainer.train.x.values())
    result = built.trainer.fit()  # in-memory batch indices come from a CPU generator: moved by gather()
    assert result.epochs_run == 1 and torch.isfinite(torch.tensor(result.history[0]["train.loss"]))
    run = dlforge.train(_small(epochs=1), out=tmp_path / "run", progress=False)
    assert run.metrics["test"]["accuracy"] > 0.3


def test_backbone_protocol_names_what_training_needs():
    """Training finds pretrained backbones through the Backbone Protocol, not attribute probing."""
    from dlforge.models.encoders.backbone import BackboneEncoder
    from dlforge.models.encoders.base import Backbone, Encoder

    assert not isinstance(Encoder(), Backbone)
    assert all(hasattr(BackboneEncoder, name) for name in ("fully_frozen", "backbone_parameters", "unfreeze", "embed"))
