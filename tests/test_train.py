"""Training: every optimizer and schedule, regularisation, early stopping, determinism, exact resume."""

import importlib
import json

import pytest
import torch
from safetensors.torch import load_file

import dlforge
from dlforge import ArtifactError, TrainingInterrupted
from conftest import InterruptAt, digits_recipe, tabular_recipe


def weights(run_dir):
    return load_file(str(run_dir / "model.safetensors"))


def assert_same_weights(a, b):
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key


@pytest.mark.parametrize("optimizer", [
    {"name": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": True},
    {"name": "adam", "lr": 0.003},
    {"name": "adamw", "lr": 0.003, "weight_decay": 0.01},
    {"name": "adagrad", "lr": 0.05},
    {"name": "rmsprop", "lr": 0.001},
])
def test_each_optimizer_learns(tmp_path, optimizer):
    run = dlforge.train(digits_recipe(epochs=3, optimizer=optimizer), out=tmp_path / "r", progress=False)
    history = run.history
    assert history[-1]["train.loss"] < history[0]["train.loss"]
    assert run.metrics["test"]["accuracy"] > 0.6


@pytest.mark.parametrize("schedule", [
    {"name": "constant", "warmup_epochs": 1},
    {"name": "step", "step_epochs": 1, "gamma": 0.5},
    {"name": "cosine", "min_lr_ratio": 0.1},
    {"name": "onecycle"},
    {"name": "plateau", "metric": "val.loss", "patience": 0, "factor": 0.5},
])
def test_each_schedule_moves_the_rate_as_declared(tmp_path, schedule):
    run = dlforge.train(digits_recipe(epochs=3, schedule=schedule), out=tmp_path / "r", progress=False)
    lrs = [row["lr"] for row in run.history]
    peak = 0.003
    if schedule["name"] == "step":
        assert lrs == pytest.approx([peak * 0.5, peak * 0.25, peak * 0.125])
    elif schedule["name"] == "cosine":
        assert lrs[-1] == pytest.approx(peak * 0.1, rel=1e-3)
    elif schedule["name"] == "onecycle":
        assert lrs[-1] < peak / 100 and max(lrs) <= peak
    elif schedule["name"] == "constant":
        assert lrs == pytest.approx([peak] * 3)
    elif schedule["name"] == "plateau":
        assert lrs[-1] <= peak


def test_full_batch_gradient_descent_takes_one_step_per_epoch(tmp_path):
    seen = []

    class Count:
        def on_step_end(self, trainer, step):
            seen.append(step)

    dlforge.train(digits_recipe(epochs=3, batch_size="full", optimizer={"name": "sgd", "lr": 0.1}),
                  out=tmp_path / "r", progress=False, callbacks=[Count()])
    assert seen == [0, 0, 0]


def test_l1_penalty_shrinks_weights(tmp_path):
    plain = dlforge.train(digits_recipe(epochs=2), out=tmp_path / "a", progress=False)
    l1 = dlforge.train(digits_recipe(epochs=2, regularization={"l1": 1e-3}), out=tmp_path / "b", progress=False)
    norm = lambda run: sum(float(w.abs().sum()) for k, w in weights(run.run_dir).items() if w.ndim > 1)
    assert norm(l1) < 0.7 * norm(plain)


def test_l2_penalty_shrinks_weights(tmp_path):
    plain = dlforge.train(digits_recipe(epochs=2), out=tmp_path / "a", progress=False)
    l2 = dlforge.train(digits_recipe(epochs=2, regularization={"l2": 1e-2}), out=tmp_path / "b", progress=False)
    norm = lambda run: sum(float(w.pow(2).sum()) for k, w in weights(run.run_dir).items() if w.ndim > 1)
    assert norm(l2) < norm(plain)


def test_dropout_and_dropconnect_are_active_in_training_only():
    from dlforge.models.layers import DropConnectLinear, dense_stack

    stack, width = dense_stack(10, [20], dropout=0.5, dropconnect=0.5)
    assert width == 20 and isinstance(stack[0], DropConnectLinear) and isinstance(stack[-1], torch.nn.Dropout)
    x = torch.randn(4, 10)
    stack.train()
    assert not torch.equal(stack(x), stack(x))
    stack.eval()
    assert torch.equal(stack(x), stack(x))


def test_gradient_clipping_bounds_the_norm(tmp_path):
    norms = []

    class Watch:
        def on_step_end(self, trainer, step):
            grads = [p.grad for p in trainer.model.parameters() if p.grad is not None]
            norms.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))

    dlforge.train(digits_recipe(epochs=1, grad_clip=0.01), out=tmp_path / "r", progress=False, callbacks=[Watch()])
    assert max(norms) <= 0.01 + 1e-6


@pytest.mark.slow
def test_early_stopping_stops_and_restores_best(tmp_path):
    run = dlforge.train(digits_recipe(epochs=30, optimizer={"name": "adam", "lr": 0.05},
                                      early_stopping={"metric": "val.accuracy", "patience": 2}),
                        out=tmp_path / "r", progress=False)
    history = run.history
    best = max(range(len(history)), key=lambda i: history[i]["val.accuracy"])
    assert run.metrics["epochs_run"] == best + 1 + 2 < 30
    assert run.metrics["stopped_early"] is True
    assert run.metrics["val"]["accuracy"] == pytest.approx(history[best]["val.accuracy"])


def test_training_is_deterministic(tmp_path):
    a = dlforge.train(digits_recipe(epochs=2, regularization={"dropout": 0.3}), out=tmp_path / "a", progress=False)
    b = dlforge.train(digits_recipe(epochs=2, regularization={"dropout": 0.3}), out=tmp_path / "b", progress=False)
    assert_same_weights(a.run_dir, b.run_dir)


@pytest.mark.parametrize("extra", [{}, {"regularization": {"dropout": 0.2}, "schedule": {"name": "onecycle"},
                                        "early_stopping": {"metric": "val.loss", "patience": 5}}])
def test_resume_after_mid_epoch_interrupt_is_bit_identical(tmp_path, extra):
    recipe = digits_recipe(epochs=3, batch_size=32, **extra)
    full = dlforge.train(recipe, out=tmp_path / "full", progress=False)
    with pytest.raises(TrainingInterrupted) as info:
        dlforge.train(recipe, out=tmp_path / "cut", progress=False, callbacks=[InterruptAt(step=10, epoch=1)])
    assert "dlforge train --resume" in info.value.hint
    state = torch.load(tmp_path / "cut" / "checkpoint" / "state.pt", weights_only=True)
    assert (state["epoch"], state["step"]) == (1, 11)
    resumed = dlforge.train(resume=tmp_path / "cut", progress=False)
    assert_same_weights(full.run_dir, resumed.run_dir)
    assert [r["val.loss"] for r in resumed.history] == [r["val.loss"] for r in full.history]


def test_checkpoint_every_n_steps(tmp_path):
    steps = []

    class Probe:
        def on_step_end(self, trainer, step):
            path = tmp_path / "r" / "checkpoint" / "state.pt"
            if path.exists():
                steps.append(torch.load(path, weights_only=True)["step"])

    dlforge.train(digits_recipe(epochs=1, checkpoint_every_steps=5), out=tmp_path / "r", progress=False,
                  callbacks=[Probe()])
    assert {5, 10, 15} <= set(steps)


def test_resume_without_checkpoint_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ArtifactError, match="no checkpoint to resume from"):
        dlforge.train(resume=tmp_path / "empty")


def test_existing_out_directory_is_not_overwritten_silently(tmp_path):
    dlforge.train(digits_recipe(epochs=1), out=tmp_path / "r", progress=False)
    with pytest.raises(dlforge.DlforgeError, match="already exists"):
        dlforge.train(digits_recipe(epochs=1), out=tmp_path / "r", progress=False)
    dlforge.train(digits_recipe(epochs=1), out=tmp_path / "r", progress=False, overwrite=True)


def test_tabular_binary_with_class_weights_and_metrics(tiny_csv, tmp_path):
    recipe = tabular_recipe(tiny_csv, outputs=[{"name": "target", "type": "binary", "pos_weight": "balanced"}])
    recipe["training"]["epochs"] = 15
    run = dlforge.train(recipe, out=tmp_path / "r", progress=False)
    test = run.metrics["test"]
    assert {"roc_auc", "pr_auc", "f1", "confusion_matrix"} <= set(test)
    assert test["roc_auc"] > 0.8
    assert json.loads((run.run_dir / "metrics.json").read_text())["data"]["policies"]["x2"]


def test_regression_output_reports_errors_in_user_units(tiny_csv, tmp_path):
    recipe = tabular_recipe(tiny_csv, outputs=[{"name": "amount", "type": "number", "loss": "huber"}])
    recipe["training"]["epochs"] = 30
    run = dlforge.train(recipe, out=tmp_path / "r", progress=False)
    assert run.metrics["test"]["r2"] > 0.8
    predictions = dlforge.load(run.run_dir).predict({"x1": [1.0], "x2": [0.0], "color": ["red"], "flag": ["no"]})
    assert predictions[0] == pytest.approx(3.0, abs=0.6)


def test_label_smoothing_and_balanced_class_weights(tmp_path):
    recipe = digits_recipe(epochs=1)
    recipe["outputs"][0].update({"label_smoothing": 0.1, "class_weights": "balanced"})
    run = dlforge.train(recipe, out=tmp_path / "r", progress=False)
    assert run.metrics["test"]["accuracy"] > 0.5


def test_bf16_autocast_trains_on_cpu(tmp_path):
    run = dlforge.train(digits_recipe(epochs=2, precision="bf16"), out=tmp_path / "r", progress=False)
    assert run.metrics["test"]["accuracy"] > 0.6


@pytest.mark.parametrize("native", [False, True])
def test_bf16_on_a_cpu_without_native_kernels_is_flagged(monkeypatch, tmp_path, capsys, native):
    # By module object: the attribute `dlforge.train` is the train() function, which hides the package path.
    monkeypatch.setattr(importlib.import_module("dlforge.training.precision"), "native_bf16", lambda: native)
    notices = dlforge.plan(digits_recipe(precision="bf16"))["notices"]
    assert bool(notices) == (not native)
    assert dlforge.plan(digits_recipe(precision="fp32"))["notices"] == []
    dlforge.train(digits_recipe(epochs=1, precision="bf16"), out=tmp_path / "r", progress=True)
    warned = "warning: training.precision: bf16 is emulated" in capsys.readouterr().err
    assert warned == (not native)
    if not native:
        assert "set training.precision: fp32" in notices[0]


def test_fp16_without_gpu_is_a_clear_error(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(dlforge.DlforgeError, match="fp16 needs a CUDA GPU"):
        dlforge.train(digits_recipe(epochs=1, precision="fp16"), out=tmp_path / "r", progress=False)
