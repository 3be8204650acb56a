"""The torch runtime's lean graph (artifact/lean.py): same outputs as the module, leaf layers as torch functions,
a silent fall-back to the module for what does not trace, and a runtime that says which path ran."""

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import dlforge
from dlforge.artifact.lean import LeanTraceError, lean_forward
from dlforge.artifact.runtimes import LEAN_ENV, TorchRuntime
from dlforge.models.combiners import ConcatCombiner

from conftest import tabular_recipe


class DictCNN(nn.Module):
    """A dict-input image CNN with every layer kind the rewrite knows: Conv+BN (folded), pooling, dropout."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6), nn.ReLU(),
                                      nn.MaxPool2d(2), nn.Conv2d(6, 4, 3), nn.BatchNorm2d(4), nn.GELU(),
                                      nn.AvgPool2d(2), nn.Dropout(0.5))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Identity(),
                                  nn.Linear(8, 3))

    def forward(self, inputs):
        h = self.features(inputs["image"])
        if h.ndim == 4:  # a branch on a rank: traced as the example takes it
            h = h.contiguous()
        return {"label": self.head(h)}


def _randomise_batch_norms(model):
    generator = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.num_features, generator=generator))
            m.running_var.copy_(torch.rand(m.num_features, generator=generator) + 0.5)
            m.weight.data.copy_(torch.randn(m.num_features, generator=generator))
            m.bias.data.copy_(torch.randn(m.num_features, generator=generator))
    return model.eval()


def test_the_lean_graph_of_a_cnn_matches_the_module_with_batch_norms_folded():
    torch.manual_seed(0)
    model = _randomise_batch_norms(DictCNN())
    x = {"image": torch.randn(5, 1, 10, 10)}
    lean = lean_forward(model, x)
    with torch.no_grad():
        for rows in (1, 5):
            batch = {"image": x["image"][:rows]}
            assert (lean.forward(batch)["label"] - model(batch)["label"]).abs().max() < 1e-5
    d = lean.description
    assert d["batch_norms_folded"] == 3 and d["identities_dropped"] == 2 and d["modules_kept"] == []
    code = lean.forward.__self__.code
    assert "torch.conv2d" in code and "max_pool2d" in code and "batch_norm" not in code and "dropout" not in code
    # no module calls are left: every layer is a torch function reading plain tensors
    assert all(n.op != "call_module" for n in lean.forward.__self__.graph.nodes)


def test_a_trained_image_run_predicts_the_same_through_the_lean_graph(digits_run):
    lean = dlforge.load(digits_run)
    plain = TorchRuntime(lean.model, batch_size=lean.batch_size, lean=False)
    images = np.random.default_rng(0).integers(0, 17, (7, 8, 8)).astype(np.uint8)
    x = lean.encode_inputs(images)
    assert lean.runtime.settings["path"] == "module" and "pending" in lean.runtime.settings["reason"]
    got = lean.runtime.run(x)["label"]
    assert torch.equal(got, plain.run(x)["label"])  # the same kernels in the same order: bit for bit
    one = {"image": x["image"][:1]}
    assert torch.equal(lean.runtime.run(one)["label"], plain.run(one)["label"])
    settings = lean.runtime.settings
    assert settings["path"] == "lean" and "reason" not in settings and settings["lean"]["ops"] >= 6
    assert plain.settings["path"] == "module" and "lean=False" in plain.settings["reason"]


def test_a_tabular_mlp_run_is_lean_and_matches_the_module(tiny_csv, tmp_path):
    dlforge.train(tabular_recipe(tiny_csv, training={"epochs": 1, "batch_size": 64}), out=tmp_path / "run",
                  progress=False)
    predictor = dlforge.load(tmp_path / "run")
    frame = pd.read_csv(tiny_csv)
    x = predictor.encode_inputs(frame)
    plain = TorchRuntime(predictor.model, batch_size=16, lean=False)  # several chunks
    chunked = TorchRuntime(predictor.model, batch_size=16)
    assert torch.equal(chunked.run(x)["target"], plain.run(x)["target"])
    assert chunked.settings["path"] == "lean"
    assert list(predictor.predict(frame)) == list(dlforge.load(tmp_path / "run").predict(frame))
    assert predictor.runtime.settings["path"] == "lean"


class DataBranch(nn.Module):
    """Control flow on the data (as the text encoders' trimming of padding): not traceable."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(3, 2)

    def forward(self, inputs):
        x = inputs["x"]
        if x.sum() > 0:
            x = x * 2
        return {"y": self.linear(x)}


def test_an_untraceable_model_runs_as_the_module_and_says_why():
    model = DataBranch().eval()
    runtime = TorchRuntime(model, batch_size=8)
    x = {"x": torch.tensor([[1.0, 2.0, 3.0], [-5.0, 0.0, 1.0]])}
    got = runtime.run(x)["y"]
    with torch.no_grad():
        assert torch.equal(got, model(x)["y"])
        negative = {"x": -x["x"]}
        assert torch.equal(runtime.run(negative)["y"], model(negative)["y"])
    settings = runtime.settings
    assert settings["path"] == "module" and settings["reason"].startswith("no lean graph") and "branch" in settings["reason"]
    with pytest.raises(LeanTraceError, match="branch"):
        lean_forward(model, x)


def test_a_graph_that_fails_its_parity_check_is_refused(monkeypatch):
    from dlforge.artifact import lean as lean_module

    monkeypatch.setattr(lean_module, "_leaf_call", lambda module: (torch.sigmoid, (), {}))  # a wrong rewrite
    model = nn.Sequential()
    model.add_module("linear", nn.Linear(3, 2))

    class Wrap(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = model

        def forward(self, inputs):
            return {"y": self.inner(inputs["x"])}

    runtime = TorchRuntime(Wrap().eval(), batch_size=4)
    x = {"x": torch.randn(3, 3)}
    with torch.no_grad():
        assert torch.equal(runtime.run(x)["y"], model(x["x"]))
    assert runtime.settings["path"] == "module" and "parity check" in runtime.settings["reason"]


def test_the_lean_graph_follows_a_replaced_layer_and_other_inputs_run_as_the_module():
    torch.manual_seed(0)
    model = _randomise_batch_norms(DictCNN())
    runtime = TorchRuntime(model, batch_size=8)
    x = {"image": torch.randn(2, 1, 10, 10)}
    runtime.run(x)
    first = runtime._graph
    with torch.no_grad():
        model.head[5] = nn.Linear(8, 3)  # a replaced layer (pruning, say): traced again
        assert torch.allclose(runtime.run(x)["label"], model(x)["label"], atol=1e-5)
        assert runtime._graph is not first and "traced again" in runtime.settings["reason"]
        model.features[1].running_mean.add_(1.0)  # a folded BatchNorm changed in place: traced again
        assert torch.allclose(runtime.run(x)["label"], model(x)["label"], atol=1e-5)
        model.features[0].weight.data = torch.randn(6, 1, 3, 3)  # a `.data` swap under a folded BatchNorm
        assert torch.allclose(runtime.run(x)["label"], model(x)["label"], atol=1e-5)
        model.head[5].weight.data = torch.randn(3, 8)  # ... and under no fold: the graph reads the Parameter itself
        graph = runtime._graph
        assert torch.allclose(runtime.run(x)["label"], model(x)["label"], atol=1e-5) and runtime._graph is graph
        as_double = {"image": x["image"].double()}  # another dtype than traced: the module runs it
        assert graph.accepts(as_double) is False and graph.accepts({"image": x["image"][0]}) is False
        model.double()
        assert torch.allclose(runtime.run(as_double)["label"].double(), model(as_double)["label"], atol=1e-5)


def test_the_environment_turns_the_lean_graph_off(monkeypatch, digits_run, cli):
    code, _, err = cli("predict", str(digits_run), "--data", str(_digits_csv(digits_run)))
    assert code == 0 and "runtime torch: lean graph (" in err
    monkeypatch.setenv(LEAN_ENV, "0")
    predictor = dlforge.load(digits_run)
    predictor.predict(np.zeros((2, 8, 8), dtype=np.uint8))
    assert predictor.runtime.settings["path"] == "module" and LEAN_ENV in predictor.runtime.settings["reason"]
    code, _, err = cli("predict", str(digits_run), "--data", str(_digits_csv(digits_run)))
    assert code == 0 and "runtime torch: module" in err


def _digits_csv(run):
    from PIL import Image

    folder = run.parent / "lean_csv"
    if not folder.exists():
        folder.mkdir()
        for i in range(3):
            Image.fromarray(np.full((8, 8), 16 * i, dtype=np.uint8)).save(folder / f"{i}.png")
        pd.DataFrame({"image": [f"{i}.png" for i in range(3)]}).to_csv(folder / "rows.csv", index=False)
    return folder / "rows.csv"


def _old_concat_forward(combiner, parts):
    """ConcatCombiner.forward before the rank-only branch (for the behaviour check)."""
    members = max((p.shape[1] for p in parts if p.ndim == 3), default=0)
    if members:
        parts = [p if p.ndim == 3 else p.unsqueeze(1).expand(-1, members, -1) for p in parts]
    x = parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)
    if combiner.adapter is not None:
        x = (x if members else x.unsqueeze(1)) * combiner.adapter
    return combiner.dense(x)


class _Parts(nn.Module):
    """A combiner over inputs "0", "1"... (the model's dict of encoded parts)."""

    def __init__(self, combiner, n: int):
        super().__init__()
        self.c, self.n = combiner, n

    def forward(self, inputs):
        return {"out": self.c([inputs[str(i)] for i in range(self.n)])}


@pytest.mark.parametrize("ensemble", [1, 3])
def test_the_concat_combiner_is_unchanged_and_traces(ensemble):
    from types import SimpleNamespace

    torch.manual_seed(0)
    config = SimpleNamespace(layers=[5], activation="relu", batch_norm=False, ensemble=ensemble)
    regularization = SimpleNamespace(dropout=0.0, dropconnect=0.0)
    combiner = ConcatCombiner(config, [4, 2], regularization).eval()
    cases = [[torch.randn(3, 4), torch.randn(3, 2)], [torch.randn(3, 4, 4), torch.randn(3, 2)]]
    if ensemble == 1:
        cases.append([torch.randn(3, 6)])
    for parts in cases:
        if ensemble > 1 and parts[0].ndim == 3:
            parts = [torch.randn(3, ensemble, 4), parts[1]]
        with torch.no_grad():
            assert torch.equal(combiner(parts), _old_concat_forward(combiner, parts))

        wrapped = _Parts(combiner, len(parts)).eval()
        x = {str(i): p for i, p in enumerate(parts)}
        lean = lean_forward(wrapped, x)  # the 3-D (K members) case traced too: no branch on a size
        with torch.no_grad():
            assert torch.equal(lean.forward(x)["out"], wrapped(x)["out"])
    mixed = [torch.randn(3, 2, 4), torch.randn(3, 3, 2)]  # members of different counts fail as before
    with pytest.raises(RuntimeError):
        _old_concat_forward(combiner, mixed)
    with pytest.raises(RuntimeError):
        combiner(mixed)


class _One(nn.Module):
    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, inputs):
        return {"y": self.layer(inputs["x"])}


@pytest.mark.parametrize("layer, shape", [
    (nn.Conv1d(3, 4, 3, padding="same"), (2, 3, 7)), (nn.Conv2d(3, 4, 3, stride=2, groups=1), (2, 3, 9, 9)),
    (nn.ReLU(inplace=True), (2, 5)), (nn.LeakyReLU(0.2), (2, 5)), (nn.GELU("tanh"), (2, 5)), (nn.SiLU(), (2, 5)),
    (nn.ReLU6(), (2, 5)), (nn.Hardswish(), (2, 5)), (nn.Sigmoid(), (2, 5)), (nn.Softmax(-1), (2, 5)),
    (nn.MaxPool1d(2), (2, 3, 8)), (nn.AvgPool1d(3, 2, 1), (2, 3, 8)), (nn.AdaptiveAvgPool2d((2, 3)), (2, 3, 6, 6)),
    (nn.AdaptiveAvgPool1d(1), (2, 3, 8)), (nn.LayerNorm(5), (2, 4, 5)), (nn.ConstantPad1d((1, 2), 0.5), (2, 3, 4)),
    (nn.Flatten(0), (2, 3, 4)), (nn.BatchNorm1d(5), (3, 5)), (nn.Embedding(10, 4, padding_idx=0), None),
])
def test_each_rewritten_layer_is_the_function_its_forward_calls(layer, shape):
    torch.manual_seed(0)
    model = _One(layer).eval()
    x = {"x": torch.randint(0, 10, (3, 6)) if shape is None else torch.randn(*shape)}
    with torch.no_grad():
        expected = model({"x": x["x"].clone()})["y"]
    lean = lean_forward(model, x)
    assert all(n.op != "call_module" for n in lean.forward.__self__.graph.nodes), lean.forward.__self__.code
    with torch.no_grad():
        assert torch.equal(lean.forward({"x": x["x"].clone()})["y"], expected)
