"""Multimodal fusion: one model with image + text + number + category inputs, concat and attention combiners."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import dlforge


@pytest.fixture
def multimodal_csv(tmp_path) -> Path:
    """The label is read from the image on rows whose `shop` is 'cam', from the text on rows whose shop is 'web'
    (the other modality is random there), so only a model that uses image, text and category together is
    right on every row; `price` adds a weak signal."""
    rng = np.random.default_rng(0)
    (tmp_path / "img").mkdir()
    rows = []
    for i in range(240):
        label = i % 2
        bright = label if i % 4 < 2 else rng.integers(2)
        pixels = np.full((12, 12, 3), 200 if bright else 50, dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / "img" / f"{i}.png")
        word = ("good" if label else "bad") if i % 4 >= 2 else rng.choice(["good", "bad"])
        rows.append({"photo": f"img/{i}.png", "review": f"a {word} thing", "price": rng.normal() + label,
                     "shop": "cam" if i % 4 < 2 else "web", "label": "yes" if label else "no"})
    pd.DataFrame(rows).to_csv(tmp_path / "mm.csv", index=False)
    return tmp_path / "mm.csv"


def _recipe(csv, combiner: dict) -> dict:
    return {"name": "mm", "data": {"source": str(csv), "split": {"val": 0.2, "test": 0.2, "seed": 0}},
            "inputs": [{"name": "photo", "type": "image",
                        "encoder": {"name": "cnn", "channels": [4], "padding": "same", "dense": [8]}},
                       {"name": "review", "type": "text", "encoder": {"name": "embed", "dim": 8},
                        "preprocessing": {"vocab_size": 500, "min_frequency": 1, "max_length": 8}},
                       {"name": "price", "type": "number"}, {"name": "shop", "type": "category"}],
            "outputs": [{"name": "label", "type": "binary"}], "combiner": combiner,
            "training": {"epochs": 20, "batch_size": 16, "optimizer": {"name": "adam", "lr": 0.005}}}


@pytest.mark.parametrize("combiner", [{"name": "concat", "layers": [16]},
                                      {"name": "attention", "dim": 16, "heads": 2, "ff_dim": 32, "dropout": 0.0,
                                       "layers": [16]}], ids=["concat", "attention"])
@pytest.mark.slow
def test_four_input_types_in_one_model(multimodal_csv, tmp_path, combiner):
    result = dlforge.train(_recipe(multimodal_csv, combiner), out=tmp_path / "run", progress=False)
    assert result.metrics["test"]["accuracy"] >= 0.85
    predictor = dlforge.load(result.run_dir)
    assert set(predictor.signature["inputs"]) == {"photo", "review", "price", "shop"}
    row = {"photo": [str(multimodal_csv.parent / "img" / "1.png")], "review": ["a good thing"], "price": [1.0],
           "shop": ["cam"]}
    assert list(predictor.predict(row)) == ["yes"]


def test_attention_combiner_maps_cover_inputs():
    from dlforge.models.combiners import AttentionCombiner
    from dlforge.recipe import AttentionCombiner as Config, Regularization

    comb = AttentionCombiner(Config(dim=8, heads=2, layers=[4]), [3, 5, 7], Regularization()).eval()
    comb.keep_attention()
    out = comb([torch.randn(2, 3), torch.randn(2, 5), torch.randn(2, 7)])
    assert out.shape == (2, 4)
    (maps,) = comb.attention_maps()
    assert maps.shape == (2, 2, 3, 3) and torch.allclose(maps.sum(-1), torch.ones(2, 2, 3))


def test_attention_heads_must_divide_dim(multimodal_csv):
    from dlforge.core.errors import RecipeError
    from dlforge.recipe.io import load_recipe

    with pytest.raises(RecipeError, match="combiner.heads"):
        load_recipe(_recipe(multimodal_csv, {"name": "attention", "dim": 10, "heads": 4}))
