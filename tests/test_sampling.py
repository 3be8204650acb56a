"""training.sampling: by-length batches (who gets them, what they look like, exact resume) and the fused optimizers."""

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

import dlforge
from dlforge import TrainingInterrupted
from dlforge.data.batches import InMemoryBatches
from dlforge.core.errors import RecipeError
from conftest import InterruptAt, digits_recipe


def test_by_length_batches_hold_similar_lengths_and_cover_every_row_once():
    lengths = torch.randint(1, 60, (1000,), generator=torch.Generator().manual_seed(0))
    grouped = InMemoryBatches(1000, 32, seed=1, lengths=lengths)
    plain = InMemoryBatches(1000, 32, seed=1)
    perm = grouped.permutation()
    assert sorted(perm.tolist()) == list(range(1000))
    batches = list(grouped.slices(perm))
    assert [len(b) for b in batches] == [len(b) for b in plain.slices(plain.permutation())]  # 31 x 32, then 8
    spread = [int(lengths[b].max() - lengths[b].min()) for b in batches[:-1]]
    assert max(spread) <= 3  # a window of 50 batches holds all 1000 rows here: one sorted run, cut in 32s
    assert int(lengths[batches[0]].max()) == int(lengths.max())  # the longest batch first: out-of-memory shows early
    padded = sum(len(b) * int(lengths[b].max()) for b in batches)
    padded_random = sum(len(b) * int(lengths[b].max()) for b in plain.slices(plain.permutation()))
    assert padded < 0.65 * padded_random


def test_by_length_batches_are_shuffled_and_deterministic():
    lengths = torch.randint(1, 60, (1000,), generator=torch.Generator().manual_seed(0))
    a = InMemoryBatches(1000, 32, seed=1, lengths=lengths)
    b = InMemoryBatches(1000, 32, seed=1, lengths=lengths)
    first, second = a.permutation(), a.permutation()
    assert torch.equal(first, b.permutation()) and torch.equal(second, b.permutation())
    assert not torch.equal(first, second)  # a new grouping every epoch
    # Batch order is random, not longest-to-shortest: lengths of consecutive batches go up as well as down.
    maxes = [int(lengths[s].max()) for s in a.slices(first)][1:-1]
    assert any(x < y for x, y in zip(maxes, maxes[1:])) and any(x > y for x, y in zip(maxes, maxes[1:]))


@pytest.fixture
def varied_text_csv(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for i in range(120):
        label = "pos" if i % 2 else "neg"
        words = [("great" if label == "pos" else "awful")] + list(rng.choice(["the", "film", "was", "a"], size=i % 14))
        rows.append({"text": " ".join(words), "label": label})
    path = tmp_path / "varied.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def _text_recipe(csv, encoder: str, sampling: str = "auto", epochs: int = 2) -> dict:
    return {"name": "sampling", "data": {"source": str(csv), "split": {"val": 0.0, "test": 0.2, "seed": 0}},
            "inputs": [{"name": "text", "type": "text", "encoder": {"name": encoder, "dim": 8},
                        "preprocessing": {"vocab_size": 100, "min_frequency": 1, "max_length": 16}}],
            "outputs": [{"name": "label", "type": "binary"}],
            "training": {"epochs": epochs, "batch_size": 8, "sampling": sampling}}


class _Capture:
    def on_epoch_start(self, trainer, epoch):
        self.trainer = trainer


@pytest.mark.parametrize("encoder,sampling,grouped", [
    ("lstm", "auto", True),     # packed sequences: cost follows length
    ("cnn", "auto", False),     # runs over the whole padded width: nothing to gain
    ("lstm", "random", False),  # asked for
    ("cnn", "by_length", True),  # asked for
])
@pytest.mark.slow
def test_auto_groups_by_length_only_where_the_encoder_gains(varied_text_csv, tmp_path, encoder, sampling, grouped):
    capture = _Capture()
    dlforge.train(_text_recipe(varied_text_csv, encoder, sampling, epochs=1), out=tmp_path / "run", progress=False,
                  callbacks=[capture])
    batches = capture.trainer.batches
    assert (batches.lengths is not None) == grouped
    if grouped:
        ids = capture.trainer.train.x["text"]
        assert torch.equal(batches.lengths, (ids != 0).sum(1))


def test_by_length_without_text_input_is_a_recipe_error():
    with pytest.raises(RecipeError, match="training.sampling"):
        dlforge.load_recipe(digits_recipe(sampling="by_length"))


@pytest.mark.slow
def test_by_length_training_resumes_bit_exactly(varied_text_csv, tmp_path):
    recipe = _text_recipe(varied_text_csv, "lstm", epochs=3)
    full = dlforge.train(recipe, out=tmp_path / "full", progress=False)
    with pytest.raises(TrainingInterrupted):
        dlforge.train(recipe, out=tmp_path / "cut", progress=False, callbacks=[InterruptAt(step=4, epoch=1)])
    resumed = dlforge.train(resume=tmp_path / "cut", progress=False)
    a, b = load_file(str(full.run_dir / "model.safetensors")), load_file(str(resumed.run_dir / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert full.metrics["test"]["accuracy"] == resumed.metrics["test"]["accuracy"]


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw", "adagrad"])
def test_optimizers_use_fused_kernels_on_cpu(name):
    from dlforge.training.optim import build_optimizer

    recipe = dlforge.load_recipe(digits_recipe(optimizer={"name": name, "lr": 0.01}))
    optimizer = build_optimizer(torch.nn.Linear(4, 2), recipe.training.optimizer)
    assert optimizer.defaults.get("fused") is True


@pytest.mark.parametrize("encoder,expected", [("lstm", "by token length of text"), ("cnn", "random")])
def test_recipe_check_says_how_batches_are_made(varied_text_csv, encoder, expected):
    assert dlforge.plan(_text_recipe(varied_text_csv, encoder))["batches"].startswith(expected)
