"""The minilm text backbone: its own WordPiece ids, truncation and empty texts counted, mean pooling, freezing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dlforge.data import prepare
from dlforge.data.features.text import TextFeature
from dlforge.models import build_model
from dlforge.recipe.io import load_recipe


def _recipe(csv, **encoder):
    return load_recipe({"data": {"source": str(csv), "split": {"val": 0.0, "test": 0.0, "stratify": False}},
                        "inputs": [{"name": "text", "type": "text", "preprocessing": {"max_length": 8},
                                    "encoder": {"name": "minilm", **encoder}}],
                        "outputs": [{"name": "label", "type": "binary"}]})


@pytest.fixture
def texts_csv(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text('text,label\n"a fine, moving film",yes\n"",no\n'
                    '"one two three four five six seven eight nine ten eleven",yes\n"dull",no\n')
    return path


@pytest.fixture(scope="module")
def minilm_model():
    recipe = load_recipe({"data": {"source": "x.csv"}, "inputs": [
        {"name": "text", "type": "text", "encoder": {"name": "minilm", "freeze": "until:layer.4", "backbone_lr_mult": 0.5}}],
        "outputs": [{"name": "y", "type": "binary"}]})
    signature = {"inputs": {"text": {"type": "text", "vocab_size": 30522, "max_length": 128, "pad_id": 0}},
                 "outputs": {"y": {"type": "binary", "labels": ["n", "y"], "size": 1}}}
    return build_model(recipe, signature)


def test_wordpiece_ids_with_cls_sep_truncation_and_empty_counted(texts_csv):
    prepared = prepare(_recipe(texts_csv))
    ids = prepared.splits["train"].x["text"]
    assert ids.shape[1] == 8  # the long text fills max_length exactly
    assert (ids[:, 0] == 101).all()  # [CLS]
    assert ((ids == 102).sum(1) == 1).all()  # exactly one [SEP] per row, even for the empty text and the cut one
    policies = prepared.report["policies"]["text"]
    assert policies == {"truncated": 1, "empty": 1}
    feature = prepared.inputs["text"]
    assert feature.tokenizer_.encode("a fine, moving film", add_special_tokens=False).tokens == ["a", "fine", ",", "moving", "film"]
    restored = TextFeature(feature.config, field_path="inputs.0").load_state(feature.state())
    assert torch.equal(restored.transform(np.array(["dull"], dtype=object)), feature.transform(np.array(["dull"], dtype=object)))


def test_mean_pooling_ignores_padding(minilm_model):
    encoder = minilm_model.encoders["text"].eval()
    short = torch.tensor([[101, 2204, 3185, 102]])
    padded = torch.tensor([[101, 2204, 3185, 102, 0, 0, 0, 0]])
    with torch.no_grad():
        a, b = encoder.embed(short), encoder.embed(torch.cat([padded, torch.tensor([[101] + [2204] * 6 + [102]])]))[:1]
    assert torch.allclose(a, b, atol=1e-5)
    assert a.shape == (1, 384)


def test_minilm_freeze_until_layer_and_lr_groups(minilm_model):
    from dlforge.recipe import Adam
    from dlforge.training.optim import build_optimizer

    encoder = minilm_model.encoders["text"]
    assert not any(p.requires_grad for p in encoder.blocks["layer.3"].parameters())
    assert all(p.requires_grad for p in encoder.blocks["layer.4"].parameters())
    groups = build_optimizer(minilm_model, Adam(lr=1e-3)).param_groups
    assert sorted(g["lr"] for g in groups) == pytest.approx([5e-4, 1e-3])


def test_minilm_recipe_rejects_unknown_block(texts_csv):
    from dlforge.core.errors import RecipeError

    with pytest.raises(RecipeError) as info:
        _recipe(texts_csv, freeze="until:layer.9")
    assert "layer.5" in info.value.render() and "embeddings" in info.value.render()
