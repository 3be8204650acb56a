"""DP-SGD (training.privacy) and `dlforge privacy plan`: the epsilon reported is Opacus' accountant's for the same
noise, rate and steps; training stops at the budget; resume continues the accounting bit-identically; BatchNorm is
refused by name and replaced by GroupNorm on request; bad budgets exit 2 before anything is written."""

from __future__ import annotations

import csv
import json
import re

import numpy as np
import pytest
import torch
from conftest import InterruptAt, digits_recipe, main_ok
from safetensors.torch import load_file

import dlforge
from dlforge.core.errors import DlforgeError, ModelError, TrainingInterrupted

pytest.importorskip("opacus")


def dp_recipe(privacy: dict | None = None, **training) -> dict:
    recipe = digits_recipe(**training)
    recipe["inputs"][0]["encoder"] = {"name": "mlp", "layers": [16]}
    recipe["training"].update({"optimizer": {"name": "sgd", "lr": 0.5, "momentum": 0.0},
                               "privacy": {"epsilon": 4.0, "delta": 1e-4, "max_grad_norm": 1.0, **(privacy or {})}})
    return recipe


def _opacus_epsilon(sigma: float, rate: float, steps: int, delta: float, mechanism: str = "rdp") -> float:
    from opacus.accountants import PRVAccountant, RDPAccountant

    accountant = RDPAccountant() if mechanism == "rdp" else PRVAccountant()
    for _ in range(steps):  # as Opacus' PrivacyEngine does: one accountant step per optimizer step
        accountant.step(noise_multiplier=sigma, sample_rate=rate)
    return accountant.get_epsilon(delta=delta)


@pytest.fixture(scope="module")
def dp_run(tmp_path_factory):
    """One DP run shared by the accounting and resume tests.

    Module-scoped, so it runs before conftest's per-test thread setting: set the same count here, as the resume
    test compares weights bit for bit and float sums split across threads round differently."""
    torch.set_num_threads(2)
    return dlforge.train(dp_recipe(), out=tmp_path_factory.mktemp("dp") / "run", progress=False)


def test_reported_epsilon_is_opacus_accountants_for_the_same_noise_rate_and_steps(dp_run):
    result = dp_run
    p = result.metrics["privacy"]
    n_train = result.metrics["data"]["rows"]["train"]
    steps_per_epoch = -(-n_train // 64)
    assert p["steps"] == 2 * steps_per_epoch and p["sample_rate"] == pytest.approx(1 / steps_per_epoch)
    assert p["accountant"] == "rdp" and p["delta"] == 1e-4
    assert p["epsilon"] == pytest.approx(_opacus_epsilon(p["noise_multiplier"], p["sample_rate"], p["steps"], 1e-4),
                                         abs=1e-6)
    assert p["epsilon"] <= 4.0 and p["epsilon"] > 3.9  # calibrated to the budget (Opacus' tolerance is 0.01)
    # Each epoch's spent epsilon is in history.csv, the artifact and the report carry the block.
    rows = list(csv.DictReader((result.run_dir / "history.csv").open()))
    for epoch, row in enumerate(rows, start=1):
        expected = _opacus_epsilon(p["noise_multiplier"], p["sample_rate"], epoch * steps_per_epoch, 1e-4)
        assert float(row["privacy.epsilon"]) == pytest.approx(expected, abs=1e-5)
    model_json = json.loads((result.run_dir / "model.json").read_text())
    assert model_json["privacy"]["noise_multiplier"] == p["noise_multiplier"]
    assert "differentially private" in (result.run_dir / "report.html").read_text()
    assert "public" in p["validation"]  # the val split is read without noise: said in the block
    # The saved model loads and predicts like any other.
    assert len(dlforge.load(result.run_dir).predict({"image": np.zeros((2, 8, 8))})) == 2


def test_prv_accountant_matches_opacus():
    from dlforge.training.privacy import epsilon_spent

    assert epsilon_spent(1.1, 0.01, 300, 1e-5, "prv") == pytest.approx(_opacus_epsilon(1.1, 0.01, 300, 1e-5, "prv"))


def test_training_with_fixed_noise_stops_at_the_budget(tmp_path):
    from dlforge.training.privacy import epsilon_spent

    recipe = dp_recipe({"epsilon": 2.0, "noise_multiplier": 0.8}, epochs=20)
    result = dlforge.train(recipe, out=tmp_path / "run", progress=False)
    p = result.metrics["privacy"]
    assert p["stopped_at_budget"] and result.metrics["epochs_run"] < 20
    assert p["epsilon"] <= 2.0
    # One more step would have overspent: the stop is at the budget, not before it.
    assert epsilon_spent(0.8, p["sample_rate"], p["steps"] + 1, 1e-4) > 2.0


def test_dp_training_resumes_bit_identically_with_its_accountant(dp_run, tmp_path):
    recipe, whole = dp_recipe(), dp_run
    with pytest.raises(TrainingInterrupted):  # mid-epoch: the Poisson draws and the noise RNG must both resume
        dlforge.train(recipe, out=tmp_path / "cut", progress=False, callbacks=[InterruptAt(5)])
    state = torch.load(tmp_path / "cut" / "checkpoint" / "state.pt", weights_only=True)
    assert state["strategy"]["steps"] == 6  # the accountant's state: six noisy steps spent before the stop
    resumed = dlforge.train(resume=tmp_path / "cut", progress=False)
    a, b = load_file(str(whole.run_dir / "model.safetensors")), load_file(str(resumed.run_dir / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.metrics["privacy"] == whole.metrics["privacy"]
    assert [r["privacy.epsilon"] for r in resumed.history] == [r["privacy.epsilon"] for r in whole.history]


def test_poisson_batches_vary_in_size_and_redraw_exactly_on_resume():
    from dlforge.data.batches import InMemoryBatches
    from dlforge.recipe import Privacy
    from dlforge.training.privacy import PrivateBatches, plan_privacy

    plan = plan_privacy(Privacy(epsilon=8, delta=1e-5), n_rows=10_000, batch_size=100, epochs=1, trainable=100)
    batches = PrivateBatches(InMemoryBatches(10_000, 100, seed=0), plan, lambda: 0)
    epoch = batches.permutation()
    sizes = [len(b) for b in batches.slices(epoch)]
    assert len(sizes) == 100 and len(set(sizes)) > 5 and 90 < sum(sizes) / 100 < 110
    assert all(torch.equal(a, b) for a, b in zip(list(batches.slices(epoch))[40:], batches.slices(epoch, 40)))


def test_batch_norm_is_refused_by_name_and_fix_layers_swaps_in_group_norm(tmp_path, capsys):
    from opacus.validators import ModuleValidator

    recipe = dp_recipe()
    recipe["inputs"][0]["encoder"] = {"name": "cnn", "channels": [8], "padding": "same", "batch_norm": True,
                                      "dense": [16]}
    with pytest.raises(ModelError, match=r"encoders\.image\.features\.1' \(BatchNorm2d\).*") as err:
        dlforge.train(recipe, out=tmp_path / "bn", progress=False)
    assert "fix_layers: true" in err.value.hint
    assert not (tmp_path / "bn").exists()  # refused before the run directory was made
    # What the CLI says: one message, exit 2.
    import yaml

    path = tmp_path / "bn.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert not main_ok(["train", str(path), "--out", str(tmp_path / "bn2")])
    assert "BatchNorm2d" in capsys.readouterr().err

    recipe["training"]["privacy"]["fix_layers"] = True
    result = dlforge.train(recipe, out=tmp_path / "gn", progress=False)
    model = dlforge.load(result.run_dir).model
    norms = [m for m in model.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert len(norms) == 1 and not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    # The same substitution as Opacus' ModuleValidator.fix.
    from dlforge.models import build_model
    from dlforge.recipe import Recipe

    plain = dict(recipe, training={**recipe["training"], "privacy": None})
    fixed = ModuleValidator.fix(build_model(Recipe.model_validate(plain), dlforge.load(result.run_dir).signature))
    theirs = [m for m in fixed.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert [(m.num_groups, m.num_channels, m.affine) for m in theirs] == \
        [(m.num_groups, m.num_channels, m.affine) for m in norms]


@pytest.mark.parametrize("override, words", [
    ("training.privacy.delta=0.01", ["delta 0.01 is not below 1/n", "use delta <="]),
    ("training.privacy.epsilon=0.01", ["learning is hopeless", "smallest epsilon this recipe can use is"]),
])
def test_bad_budgets_exit_2_before_training_in_plan_and_train(tmp_path, capsys, override, words):
    import yaml

    path = tmp_path / "dp.yaml"
    path.write_text(yaml.safe_dump(dp_recipe()))
    assert not main_ok(["privacy", "plan", str(path), "--set", override])
    err = capsys.readouterr().err
    assert all(w in err for w in words) and "Traceback" not in err
    with pytest.raises(SystemExit) as code:
        from dlforge.cli import main

        main(["train", str(path), "--set", override, "--out", str(tmp_path / "run")])
    assert code.value.code == 2 and not (tmp_path / "run").exists()


def test_privacy_plan_prints_noise_steps_and_the_epsilon_curve(tmp_path, capsys):
    import yaml

    from dlforge.training.privacy import epsilon_spent

    path = tmp_path / "dp.yaml"
    path.write_text(yaml.safe_dump(dp_recipe(epochs=3)))
    assert main_ok(["privacy", "plan", str(path)])
    out = capsys.readouterr().out
    assert "noise multiplier:" in out and "steps an epoch" in out and "smallest usable epsilon" in out
    curve = [float(m.group(1)) for m in re.finditer(r"^\s+epoch\s+\d+: ([\d.]+)$", out, re.MULTILINE)]
    assert len(curve) == 3 and curve == sorted(curve) and curve[-1] <= 4.0
    plan = dlforge.workflows.plan.privacy_plan(path)
    assert curve[-1] == pytest.approx(epsilon_spent(plan.noise_multiplier, plan.sample_rate, plan.max_steps, 1e-4),
                                      abs=1e-4)


def test_settings_that_void_the_guarantee_are_recipe_errors():
    for training in ({"accumulate": 2}, {"grad_clip": 1.0}, {"regularization": {"l2": 0.01}}, {"baseline": True}):
        with pytest.raises(DlforgeError, match="training.privacy"):
            dlforge.train(dp_recipe(**training), progress=False)
    auto = dp_recipe()
    auto["training"]["optimizer"]["lr"] = "auto"  # the range test would read the rows without noise
    with pytest.raises(DlforgeError, match="range test"):
        dlforge.train(auto, progress=False)


@pytest.mark.slow
def test_private_transfer_trains_the_head_on_cached_embeddings(tmp_path, monkeypatch):
    """A frozen pretrained backbone (mobilenet_v2, BatchNorm inside) is embedded once; DP-SGD trains the head only."""
    from PIL import Image

    monkeypatch.setenv("DLFORGE_CACHE", str(tmp_path / "cache"))
    rows, rng = ["file,label"], np.random.default_rng(0)
    for i in range(240):
        colour = (200, 30, 30) if i % 2 else (30, 30, 200)
        Image.fromarray(np.clip(rng.normal(0, 20, (36, 36, 3)) + colour, 0, 255).astype(np.uint8)).save(tmp_path / f"{i}.png")
        rows.append(f"{i}.png,{'red' if i % 2 else 'blue'}")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    recipe = {"name": "dp-transfer", "data": {"source": str(tmp_path / "labels.csv"), "split": {"val": 0.0, "test": 0.2}},
              "inputs": [{"name": "file", "type": "image", "preprocessing": {"size": [32, 32], "resize_shorter": 36},
                          "encoder": {"name": "mobilenet_v2", "dense": []}}],
              "outputs": [{"name": "label", "type": "category"}],
              "training": {"epochs": 3, "batch_size": 48, "optimizer": {"name": "sgd", "lr": 0.5, "momentum": 0.0},
                           "privacy": {"epsilon": 8.0, "delta": 1e-3}}}
    result = dlforge.train(recipe, out=tmp_path / "run", progress=False)
    assert result.metrics["backbones"]["file"]["path"] == "cached embeddings"
    assert result.metrics["privacy"]["epsilon"] <= 8.0
    assert result.metrics["test"]["accuracy"] >= 0.9  # red vs blue through a frozen ImageNet backbone


def test_early_stopping_counts_every_step_run_and_says_validation_is_not_covered(tmp_path):
    recipe = dp_recipe(epochs=6, early_stopping={"metric": "val.loss", "patience": 1, "min_delta": 10.0})
    result = dlforge.train(recipe, out=tmp_path / "run", progress=False)
    p = result.metrics["privacy"]
    assert result.metrics["stopped_early"] and result.metrics["epochs_run"] == 2  # no improvement of 10 after epoch 1
    steps_per_epoch = round(1 / p["sample_rate"])
    assert p["steps"] == 2 * steps_per_epoch and not p["stopped_at_budget"]
    # The released model is epoch 1's, but the privacy spent is that of every step run.
    assert p["epsilon"] == pytest.approx(_opacus_epsilon(p["noise_multiplier"], p["sample_rate"], p["steps"], 1e-4),
                                         abs=1e-6)
    assert "validation split" in p["validation"]


def _privacy(**kw):
    from types import SimpleNamespace

    return SimpleNamespace(**{"epsilon": 3.0, "delta": 1e-5, "max_grad_norm": 1.0, "noise_multiplier": None,
                              "accountant": "rdp", "poisson_sampling": True, "secure_mode": False, **kw})


def test_delta_of_1_over_n_is_refused_and_the_smallest_epsilon_offered_is_feasible():
    from dlforge.training.privacy import PrivacyBudgetError, plan_privacy

    shape = dict(n_rows=1000, batch_size=50, epochs=3, trainable=50_000)
    with pytest.raises(PrivacyBudgetError, match="not below 1/n"):
        plan_privacy(_privacy(delta=1 / 1000), **shape)
    assert plan_privacy(_privacy(delta=1e-4), **shape).noise_multiplier > 0
    with pytest.raises(PrivacyBudgetError, match="hopeless") as refused:
        plan_privacy(_privacy(epsilon=0.05, delta=1e-4), **shape)
    smallest = float(re.search(r"smallest epsilon this recipe can use is ([\d.e+-]+)", refused.value.hint).group(1))
    plan = plan_privacy(_privacy(epsilon=smallest, delta=1e-4), **shape)  # the offered budget is accepted ...
    assert plan.snr >= 1.0 and plan.epoch_epsilons[-1] <= smallest
    with pytest.raises(PrivacyBudgetError, match="hopeless"):  # ... and it is close to the edge
        plan_privacy(_privacy(epsilon=smallest * 0.8, delta=1e-4), **shape)


class _Mixed(torch.nn.Module):
    """Every kind of layer the one-pass clipper handles: convs (1 and 4 input channels), GroupNorm (Opacus' rule), an
    Embedding, a Linear on 3-D input, a Linear called twice in one forward pass, a frozen bias."""

    def __init__(self):
        super().__init__()
        nn = torch.nn
        self.emb, self.conv, self.norm = nn.Embedding(7, 4), nn.Conv2d(1, 4, 3, 2, padding=1), nn.GroupNorm(2, 4)
        self.conv2 = nn.Conv2d(4, 3, 3, padding=2, dilation=2)  # more channels: the unfold path, with dilation
        self.seq, self.head, self.shared = nn.Linear(4, 5), nn.Linear(3 * 4 * 4 + 5, 6), nn.Linear(6, 6)
        self.seq.bias.requires_grad_(False)

    def forward(self, x, t):
        z = self.head(torch.cat([self.conv2(self.norm(self.conv(x))).flatten(1), self.seq(self.emb(t)).mean(1)], 1))
        return self.shared(torch.tanh(self.shared(z)))


def test_one_pass_clipping_equals_opacus_per_example_clipping():
    from opacus.grad_sample import GradSampleHooks
    from opacus.optimizers import DPOptimizer

    from dlforge.training import per_example

    torch.manual_seed(1)
    x, t, y = torch.randn(9, 1, 8, 8), torch.randint(0, 7, (9, 5)), torch.randint(0, 6, (9,))

    def one_step(ours: bool) -> list[torch.Tensor]:
        torch.manual_seed(0)
        model = _Mixed()
        sgd = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
        dp = dict(noise_multiplier=0.0, max_grad_norm=0.5, expected_batch_size=9)
        if ours:
            assert per_example.supports(model)
            optimizer = per_example.clipped_sum_optimizer(sgd, per_example.PerExampleClipper(model), **dp)
        else:
            GradSampleHooks(model)
            optimizer = DPOptimizer(sgd, **dp)
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x, t), y).backward()
        optimizer.step()
        return [p.detach().clone() for p in model.parameters()]

    torch.manual_seed(0)
    before = [p.detach().clone() for p in _Mixed().parameters()]
    theirs, ours = one_step(False), one_step(True)
    moved = [not torch.equal(a, b) for a, b in zip(before, theirs)]
    assert sum(moved) == len(before) - 1  # every trainable tensor moved (the frozen bias did not)
    for a, b in zip(theirs, ours):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)

    class Scale(torch.nn.Module):  # a layer with its own weight and no per-example rule: Opacus' hooks instead
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(3))

        def forward(self, x):
            return x * self.w

    assert not per_example.supports(torch.nn.Sequential(torch.nn.Linear(3, 3), Scale()))


class _Convs(torch.nn.Module):
    """Both branches of the clipper's choice per layer (ghost norm where 2 L^2 < K * out, else per-example gradients)
    for Conv2d (stride, padding, dilation, asymmetric kernel, with and without bias, a frozen weight under a trainable
    bias, a conv called twice) and for Linear on sequences; an in-place activation after a tapped conv."""

    def __init__(self):
        super().__init__()
        nn = torch.nn
        self.c1 = nn.Conv2d(2, 6, 3, padding=1)  # L 36, K 18: per-example, grouped convolution (2 channels)
        self.c2 = nn.Conv2d(6, 9, (3, 2), stride=(2, 1), padding=(1, 0), dilation=(1, 2))  # L 12, K 36: ghost, pixels
        self.pixels_twice = nn.Conv2d(9, 9, 3, padding=1)  # L 12, K 81, out 9: ghost, pixels; called twice
        self.c3 = nn.Conv2d(9, 2, 3, padding=1)  # L 12, K 81, out 2: per-example, unfolded
        self.c4 = nn.Conv2d(2, 5, 3, padding=(1, 2), bias=False)  # L 18 (3x6), K 18: per-example, grouped
        self.twice = nn.Conv2d(5, 5, 1)  # called twice (L 18, K 5: per-example, unfolded): the gradients add up
        self.frozen = nn.Conv2d(5, 5, (1, 2), stride=(1, 2))  # weight frozen, bias trained
        self.frozen.weight.requires_grad_(False)
        self.ghost_c = nn.Conv2d(5, 12, 2, stride=2)  # L 1 (3x3 -> 1x1), K 20: ghost, ||a_i|| ||b_i||
        self.patch = nn.Conv2d(5, 4, 2, stride=2)  # L 3 (3x6 -> 1x3), K 20: ghost, unfolded (a pixel Gram costs more)
        self.seq_ghost, self.seq_full = nn.Linear(3, 8), nn.Linear(8, 2)  # T 3: 18 < 24 ghost; 18 >= 16 per-example
        self.head = nn.Linear(12 + 12 + 6, 4)
        self.inplace = True  # Opacus' backward hooks refuse an in-place op on a hooked output

    def forward(self, x, s):
        z = self.c1(x)
        z = torch.relu_(z) if self.inplace else torch.relu(z)  # in place on the tapped output
        z = torch.tanh(self.pixels_twice(torch.tanh(self.pixels_twice(torch.tanh(self.c2(z))))))
        z = torch.tanh(self.c4(torch.tanh(self.c3(z))))
        z = torch.tanh(self.twice(torch.tanh(self.twice(z))))
        p = self.patch(z)
        z = self.ghost_c(torch.tanh(self.frozen(z)))
        t = self.seq_full(torch.tanh(self.seq_ghost(s))).flatten(1)
        return self.head(torch.cat([z.flatten(1), p.flatten(1), t], 1))


def test_clipped_sums_equal_opacus_for_every_conv_and_sequence_branch_over_varying_batches():
    """The clipped sum written by `clip` equals Opacus' `DPOptimizer.clip_and_accumulate` (float64, to 1e-10) for
    each branch, over three batch sizes in a row (Poisson batches vary: the kept buffers shrink and grow), and the
    ghost / per-example choice is the one documented for each layer."""
    from opacus.grad_sample import GradSampleHooks
    from opacus.optimizers import DPOptimizer

    from dlforge.training import per_example

    torch.manual_seed(0)
    ours, theirs = _Convs().double(), _Convs().double()
    theirs.load_state_dict(ours.state_dict())
    theirs.inplace = False
    clipper = per_example.PerExampleClipper(ours)
    GradSampleHooks(theirs)
    trainable = [p for p in theirs.parameters() if p.requires_grad]
    opacus = DPOptimizer(torch.optim.SGD(trainable, lr=1.0), noise_multiplier=0.0, max_grad_norm=0.05,
                         expected_batch_size=8)
    for n in (8, 13, 5):
        x, s = torch.randn(n, 2, 6, 6, dtype=torch.float64), torch.randn(n, 3, 3, dtype=torch.float64)
        y = torch.randint(0, 4, (n,))
        torch.nn.functional.cross_entropy(ours(x, s), y).backward()
        pending = clipper.pending
        route = {name: [(type(c).__name__, getattr(c, "ghost", None)) for c in pending[module]]
                 for name, module in ours.named_children()}
        grouped, pixels, rows, per_example = ("dict", None), ("_ConvGram", True), ("_Rows", True), ("_Rows", False)
        assert route == {"c1": [grouped], "c2": [pixels], "pixels_twice": [pixels] * 2, "c3": [per_example],
                         "c4": [grouped],
                         "twice": [per_example] * 2, "frozen": [rows], "ghost_c": [rows], "patch": [rows],
                         "seq_ghost": [rows], "seq_full": [per_example], "head": [rows]}
        assert all(p.grad is None for p in ours.parameters())  # the tap: autograd formed no weight gradient
        clipper.clip(0.05)
        opacus.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(theirs(x, s), y).backward()
        opacus.clip_and_accumulate()
        for (name, p), q in zip(ours.named_parameters(), theirs.parameters()):
            if not p.requires_grad:
                assert p.grad is None and q.grad is None
                continue
            torch.testing.assert_close(p.grad, q.summed_grad, rtol=1e-10, atol=1e-12, msg=name)
            p.grad = None


def test_the_tap_passes_back_the_input_gradient_autograd_would():
    """Under the clipper, the gradient reaching a layer's input (through Linear and Conv2d taps with stride, padding,
    dilation) is autograd's own; clip() then fills the weights' .grad."""
    from dlforge.training import per_example

    torch.manual_seed(0)
    nn = torch.nn
    plain = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1, dilation=2), nn.Tanh(), nn.Conv2d(4, 4, 2),
                          nn.Flatten(), nn.Linear(16, 3)).double()
    tapped = nn.Sequential(*[m for m in plain.children()])  # the same layers: same weights
    x = torch.randn(6, 3, 7, 7, dtype=torch.float64, requires_grad=True)
    expected, = torch.autograd.grad(plain(x).square().sum(), x)
    clipper = per_example.PerExampleClipper(tapped)
    got, = torch.autograd.grad(tapped(x).square().sum(), x)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    assert all(p.grad is None for p in tapped.parameters())
    clipper.clip(1e6)  # nothing clipped: the sum of the per-example gradients
    reference = nn.Sequential(*[m for m in plain.children()])
    clipper.remove()
    grads = [p.grad.clone() for p in tapped.parameters()]
    for p in reference.parameters():
        p.grad = None
    reference(x).square().sum().backward()
    for g, p in zip(grads, reference.parameters()):  # the clipper reads the loss as a batch mean: x n
        torch.testing.assert_close(g, p.grad * 6, rtol=1e-10, atol=1e-12)
