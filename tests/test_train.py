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
@pytest.mark.slow
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
@pytest.mark.slow
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
    elif schedule["name"] == "plateau":  # patience 0: halved after every epoch whose val.loss is no new best
        best, expected = float("inf"), [peak]
        for row in run.history[:-1]:
            improved = row["val.loss"] < best * (1 - 1e-4)  # ReduceLROnPlateau's default relative threshold
            best = min(best, row["val.loss"])
            expected.append(expected[-1] * (1 if improved else 0.5))
        assert lrs == pytest.approx(expected)


@pytest.mark.slow
def test_plateau_schedule_cuts_the_rate_by_its_factor_after_patience(tmp_path):
    # At lr 1e-6 no validation prediction changes, so val.accuracy (watched as higher-is-better) stays flat: a
    # plateau from the second epoch. (Not 1e-8: ReduceLROnPlateau ignores cuts smaller than its eps, 1e-8.)
    recipe = digits_recipe(epochs=5, optimizer={"name": "sgd", "lr": 1e-6, "momentum": 0.0},
                           schedule={"name": "plateau", "metric": "val.accuracy", "patience": 1, "factor": 0.5})
    run = dlforge.train(recipe, out=tmp_path / "r", progress=False)
    assert len({row["val.accuracy"] for row in run.history}) == 1
    # Epoch 1 sets the best; after more than `patience` (1) epochs without improvement, the rate halves.
    assert [row["lr"] for row in run.history] == pytest.approx([1e-6, 1e-6, 1e-6, 5e-7, 5e-7], rel=1e-9)


@pytest.mark.slow
def test_full_batch_gradient_descent_takes_one_step_per_epoch(tmp_path):
    seen = []

    class Count:
        def on_step_end(self, trainer, step):
            seen.append(step)

    dlforge.train(digits_recipe(epochs=3, batch_size="full", optimizer={"name": "sgd", "lr": 0.1}),
                  out=tmp_path / "r", progress=False, callbacks=[Count()])
    assert seen == [0, 0, 0]


@pytest.mark.slow
def test_l1_penalty_shrinks_weights(tmp_path):
    plain = dlforge.train(digits_recipe(epochs=2), out=tmp_path / "a", progress=False)
    l1 = dlforge.train(digits_recipe(epochs=2, regularization={"l1": 1e-3}), out=tmp_path / "b", progress=False)
    norm = lambda run: sum(float(w.abs().sum()) for k, w in weights(run.run_dir).items() if w.ndim > 1)
    assert norm(l1) < 0.7 * norm(plain)


@pytest.mark.slow
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


@pytest.mark.slow
def test_training_is_deterministic(tmp_path):
    a = dlforge.train(digits_recipe(epochs=2, regularization={"dropout": 0.3}), out=tmp_path / "a", progress=False)
    b = dlforge.train(digits_recipe(epochs=2, regularization={"dropout": 0.3}), out=tmp_path / "b", progress=False)
    assert_same_weights(a.run_dir, b.run_dir)


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_existing_out_directory_is_not_overwritten_silently(tmp_path):
    dlforge.train(digits_recipe(epochs=1), out=tmp_path / "r", progress=False)
    with pytest.raises(dlforge.DlforgeError, match="already exists"):
        dlforge.train(digits_recipe(epochs=1), out=tmp_path / "r", progress=False)
    dlforge.train(digits_recipe(epochs=1), out=tmp_path / "r", progress=False, overwrite=True)


@pytest.mark.slow
def test_tabular_binary_with_class_weights_and_metrics(tiny_csv, tmp_path):
    recipe = tabular_recipe(tiny_csv, outputs=[{"name": "target", "type": "binary", "pos_weight": "balanced"}])
    recipe["training"]["epochs"] = 15
    run = dlforge.train(recipe, out=tmp_path / "r", progress=False)
    test = run.metrics["test"]
    assert {"roc_auc", "pr_auc", "f1", "confusion_matrix"} <= set(test)
    assert test["roc_auc"] > 0.8
    assert json.loads((run.run_dir / "metrics.json").read_text())["data"]["policies"]["x2"]


@pytest.mark.slow
def test_regression_output_reports_errors_in_user_units(tiny_csv, tmp_path):
    recipe = tabular_recipe(tiny_csv, outputs=[{"name": "amount", "type": "number", "loss": "huber"}])
    recipe["training"]["epochs"] = 30
    run = dlforge.train(recipe, out=tmp_path / "r", progress=False)
    assert run.metrics["test"]["r2"] > 0.8
    predictions = dlforge.load(run.run_dir).predict({"x1": [1.0], "x2": [0.0], "color": ["red"], "flag": ["no"]})
    assert predictions[0] == pytest.approx(3.0, abs=0.6)


def test_label_smoothing_and_balanced_class_weights_reach_the_loss(tmp_path):
    import torch.nn.functional as F

    from dlforge.data import prepare
    from dlforge.recipe.io import load_recipe
    from dlforge.training.setup import build_training

    recipe = digits_recipe(epochs=1)
    recipe["outputs"][0].update({"label_smoothing": 0.1, "class_weights": "balanced"})
    recipe = load_recipe(recipe)
    prepared = prepare(recipe)
    built = build_training(recipe, prepared, run_dir=tmp_path)
    counts = torch.bincount(prepared.splits["train"].y["label"], minlength=10).float()
    weight = counts.sum() / (10 * counts)  # balanced: n / (classes * n_c), as scikit-learn's compute_class_weight
    assert torch.allclose(built.model.heads["label"].class_weight, weight)

    assert built.trainer.fit().history[0]["train.loss"] > 0
    val = prepared.splits["val"]
    logits = built.trainer.predict_logits(val)  # trained: confident logits, where smoothing costs the most
    target = val.y["label"]
    loss = float(built.model.loss(logits, {"label": target}))
    by_hand = F.cross_entropy(logits["label"], target, weight=weight, label_smoothing=0.1)
    assert loss == pytest.approx(float(by_hand), rel=1e-6)
    # Each option changes the value: neither is dropped on the way to the loss.
    assert abs(loss - float(F.cross_entropy(logits["label"], target, label_smoothing=0.1))) > 1e-6
    assert abs(loss - float(F.cross_entropy(logits["label"], target, weight=weight))) > 1e-2


@pytest.mark.slow
def test_bf16_autocast_trains_on_cpu(tmp_path):
    run = dlforge.train(digits_recipe(epochs=2, precision="bf16"), out=tmp_path / "r", progress=False)
    assert run.metrics["test"]["accuracy"] > 0.6


@pytest.mark.slow
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
