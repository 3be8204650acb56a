"""Memory and precision options: activation checkpointing (same gradients, fewer saved activations), the compile
time reported apart, and CUDA autocast (bf16/fp16) where a GPU exists. Gradient accumulation's equivalence with
an N-times batch is tests/test_training_plugins.py::test_accumulating_two_batches_of_32_updates_like_one_batch_of_64.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from conftest import tabular_recipe
from dlforge.core.errors import DlforgeError
from dlforge.models.encoders.sequence_layers import TransformerBackbone
from dlforge.training.memory import enable_activation_checkpointing


def _saved_tensors(fn) -> int:
    """How many tensors autograd keeps for the backward while `fn` runs its forward."""
    count = [0]

    def pack(t):
        count[0] += 1
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return count[0], out


def _grads(model, run) -> dict:
    model.zero_grad(set_to_none=True)
    torch.manual_seed(1)  # the same dropout masks in both runs
    n_saved, loss = _saved_tensors(run)
    loss.backward()
    return n_saved, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_checkpointed_transformer_layers_give_the_same_gradients_and_keep_fewer_activations():
    torch.manual_seed(0)
    config = SimpleNamespace(dim=16, heads=2, ff_dim=32, dropout=0.1, layers=3, pooling="mean")
    model = TransformerBackbone(config, max_length=12).train()
    h = torch.randn(4, 12, 16)
    valid = torch.ones(4, 12, dtype=torch.bool)
    valid[1, 7:] = False

    def run():
        return model(h, valid).pow(2).sum()

    plain_saved, plain = _grads(model, run)
    assert enable_activation_checkpointing(model) == [""]
    ckpt_saved, checkpointed = _grads(model, run)
    assert plain.keys() == checkpointed.keys() and len(plain) > 10
    for name in plain:
        assert torch.allclose(plain[name], checkpointed[name], atol=1e-6), name
    assert ckpt_saved < plain_saved / 2, (ckpt_saved, plain_saved)  # only each layer's inputs are kept
    with torch.no_grad():  # evaluation recomputes nothing
        assert torch.allclose(model.eval()(h, valid), model(h, valid))


@pytest.mark.slow  # importing transformers: ~15 s under load
def test_checkpointed_hugging_face_backbone_gives_the_same_gradients():
    """The minilm path: a Hugging Face BERT (here a 2-layer one of MiniLM's kind, built from a config in a blink
    instead of loading the 22M-parameter weights) gets HF's own checkpointing, with equal gradients."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=16)
    model = torch.nn.ModuleDict({"backbone": transformers.BertModel(config)}).train()
    ids = torch.tensor([[1, 5, 9, 13, 2, 0, 0, 0], [1, 7, 11, 2, 0, 0, 0, 0]])

    def run():
        return model["backbone"](input_ids=ids, attention_mask=(ids != 0).long()).last_hidden_state.pow(2).sum()

    plain_saved, plain = _grads(model, run)
    assert enable_activation_checkpointing(model) == ["backbone"]
    ckpt_saved, checkpointed = _grads(model, run)
    assert plain.keys() == checkpointed.keys()
    for name in plain:
        assert torch.allclose(plain[name], checkpointed[name], atol=1e-5), name
    assert ckpt_saved < plain_saved


def test_activation_checkpointing_without_a_transformer_is_refused(tiny_csv, tmp_path):
    import dlforge

    recipe = tabular_recipe(tiny_csv)
    recipe["training"] = {**recipe["training"], "activation_checkpointing": True, "baseline": False}
    with pytest.raises(DlforgeError, match="no transformer layers") as info:
        dlforge.train(recipe, out=tmp_path / "run", progress=False)
    assert info.value.where == "training.activation_checkpointing"


def test_compile_time_is_reported_apart_from_training(tiny_csv, tmp_path, monkeypatch):
    """The first call of the compiled module (where torch.compile compiles) is timed and reported apart.

    A real torch.compile of this tiny MLP took 125 s of the test's wall time on the loaded 2-core machine, so
    the compiler is replaced by a module whose first call takes 0.3 s longer, as a compilation does."""
    import time

    import dlforge

    class SlowFirstCall(torch.nn.Module):
        def __init__(self, module):
            super().__init__()
            self.module, self.calls = module, 0

        def forward(self, *args, **kwargs):
            self.calls += 1
            if self.calls == 1:
                time.sleep(0.3)
            return self.module(*args, **kwargs)

    monkeypatch.setattr(torch, "compile", lambda module, **kwargs: SlowFirstCall(module))
    recipe = tabular_recipe(tiny_csv)
    recipe["training"] = {**recipe["training"], "epochs": 1, "compile": True, "baseline": False}
    result = dlforge.train(recipe, out=tmp_path / "run", progress=False)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert 0.3 <= metrics["compile_seconds"] <= metrics["train_seconds"]
    assert result.metrics["compile_seconds"] == metrics["compile_seconds"]


def test_without_compile_no_compile_time_is_reported(tiny_csv, tmp_path):
    import dlforge

    recipe = tabular_recipe(tiny_csv)
    recipe["training"] = {**recipe["training"], "epochs": 1, "baseline": False}
    metrics = dlforge.train(recipe, out=tmp_path / "run", progress=False).metrics
    assert "compile_seconds" not in metrics


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_cuda_autocast_trains_in_half_precision(tiny_csv, tmp_path, precision):
    import dlforge

    recipe = tabular_recipe(tiny_csv)
    recipe["training"] = {**recipe["training"], "epochs": 2, "precision": precision, "baseline": False}
    metrics = dlforge.train(recipe, out=tmp_path / "run", progress=False).metrics
    assert 0.5 <= metrics["test"]["accuracy"] <= 1.0
    history = (tmp_path / "run" / "history.csv").read_text().splitlines()
    assert all("nan" not in line for line in history[1:])
