"""Text input: tokenizer fitted on train, truncation/empty counts, non-UTF-8, every encoder, attention maps."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import dlforge
from dlforge.cli import main
from dlforge.core.errors import DataError

POS = ["great", "wonderful", "loved", "superb", "brilliant"]
NEG = ["awful", "boring", "hated", "terrible", "dull"]


@pytest.fixture
def text_csv(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(160):
        label = "pos" if i % 2 else "neg"
        words = list(rng.choice(POS if label == "pos" else NEG, size=2)) + list(rng.choice(["the", "film", "was", "a", "plot"], size=4))
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": label})
    rows[0]["text"] = ""  # empty text: kept, counted
    rows[2]["text"] = " ".join(["very"] * 40) + " awful"  # longer than max_length: truncated, counted
    path = tmp_path / "reviews.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def _recipe(csv, encoder: dict, **prep) -> dict:
    return {"name": "text", "data": {"source": str(csv), "split": {"val": 0.2, "test": 0.2, "seed": 0}},
            "inputs": [{"name": "text", "type": "text", "encoder": encoder,
                        "preprocessing": {"vocab_size": 400, "min_frequency": 1, "max_length": 16, **prep}}],
            "outputs": [{"name": "label", "type": "binary"}],
            "training": {"epochs": 8, "batch_size": 16, "optimizer": {"name": "adam", "lr": 0.01}}}


ENCODERS = [{"name": "embed", "dim": 16}, {"name": "embed", "dim": 16, "pooling": "max"},
            {"name": "ngram", "dim": 16, "buckets": 1000, "dropout": 0.0},
            {"name": "ngram", "dim": 16, "buckets": 1000, "dropout": 0.0, "members": 3},
            {"name": "cnn", "dim": 16, "filters": 8, "kernel_sizes": [2, 3]},
            {"name": "lstm", "dim": 16, "hidden": 16}, {"name": "gru", "dim": 16, "hidden": 8, "bidirectional": False,
                                                        "pooling": "mean"},
            {"name": "transformer", "dim": 16, "heads": 2, "layers": 1, "ff_dim": 32, "dropout": 0.0},
            {"name": "transformer", "dim": 16, "heads": 2, "layers": 1, "ff_dim": 32, "pooling": "mean"}]


@pytest.mark.slow
@pytest.mark.parametrize("encoder", ENCODERS, ids=lambda e: f"{e['name']}-{e.get('pooling', '')}{e.get('members', '')}")
def test_each_encoder_learns_keywords(text_csv, tmp_path, encoder):
    result = dlforge.train(_recipe(text_csv, encoder), out=tmp_path / "run", progress=False)
    assert result.metrics["test"]["accuracy"] >= 0.85
    policies = result.metrics["data"]["policies"]["text"]
    assert policies["truncated"] == 1 and policies["empty"] == 1
    predictor = dlforge.load(result.run_dir)
    assert list(predictor.predict(["superb brilliant film", "dull boring plot"])) == ["pos", "neg"]


def test_bpe_tokenizer_state_round_trips_in_model_json(text_csv, tmp_path):
    import json

    result = dlforge.train(_recipe(text_csv, {"name": "embed", "dim": 8}, tokenizer="bpe", lowercase=False),
                           out=tmp_path / "run", progress=False)
    meta = json.loads((result.run_dir / "model.json").read_text())
    state = meta["features"]["inputs"]["text"]
    assert state["tokenizer"]["model"]["type"] == "BPE" and state["max_length"] == 16
    predictor = dlforge.load(result.run_dir)
    assert predictor.inputs["text"].tokens("Great film")[0] == "[CLS]"


@pytest.mark.parametrize("kind", ["bpe"])
def test_tokenizer_training_is_reproducible(kind):
    """The default byte-level BPE learns the same vocabulary from the same texts (wordpiece does not:
    huggingface/tokenizers#1794), so runs stay reproducible."""
    from dlforge.data.features.text import TextFeature
    from dlforge.recipe import TextInput

    rng = np.random.default_rng(0)
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]
    texts = np.array([" ".join(rng.choice(words, 6)) + f" {rng.integers(1000)}" for _ in range(300)], dtype=object)
    states = [TextFeature(TextInput(name="t", preprocessing={"tokenizer": kind, "vocab_size": 300}),
                          field_path="inputs.0").fit(texts).state() for _ in range(3)]
    assert states[0] == states[1] == states[2]


def test_padding_does_not_change_outputs():
    """A text padded with extra [PAD] gives the same vector: masks, packing and pooling ignore padding."""
    from dlforge.models.encoders.text import TextRNN, TextTransformer, TextEmbed
    from dlforge.recipe import TextEmbedEncoder, TextRNNEncoder, TransformerEncoderConfig, Regularization

    torch.manual_seed(0)
    sig = {"vocab_size": 50, "max_length": 12, "pad_id": 0}
    ids = torch.tensor([[2, 5, 9, 7]])
    padded = torch.tensor([[2, 5, 9, 7, 0, 0, 0]])
    # (TextCNN is left out: a convolution's window at the text's end sees the zero [PAD] embedding.)
    for cls, cfg in ((TextEmbed, TextEmbedEncoder(dim=8)),
                     (TextRNN, TextRNNEncoder(dim=8, hidden=4)), (TextRNN, TextRNNEncoder(name="gru", dim=8, hidden=4, pooling="max")),
                     (TextTransformer, TransformerEncoderConfig(dim=8, heads=2, layers=1, dropout=0.0))):
        enc = cls(cfg, sig, Regularization()).eval()
        assert torch.allclose(enc(ids), enc(padded), atol=1e-5), cls.__name__


def test_transformer_attention_maps_are_retrievable():
    from dlforge.models.encoders.text import TextTransformer
    from dlforge.recipe import Regularization, TransformerEncoderConfig

    enc = TextTransformer(TransformerEncoderConfig(dim=8, heads=2, layers=2), {"vocab_size": 30, "max_length": 10},
                          Regularization()).eval()
    enc.keep_attention()
    enc(torch.tensor([[2, 4, 5, 0], [2, 7, 0, 0]]))
    maps = enc.attention_maps()
    assert len(maps) == 2 and maps[0].shape == (2, 2, 4, 4)
    assert torch.all(maps[0][1, :, :, 2:] == 0)  # no attention to padding
    assert torch.allclose(maps[0].sum(-1), torch.ones(2, 2, 4))


def test_non_utf8_csv_is_a_clear_error(tmp_path, capsys):
    path = tmp_path / "latin1.csv"
    path.write_bytes("text,label\ncaf\xe9 ok,pos\nbad,neg\n".encode("latin-1"))
    import yaml

    recipe_path = tmp_path / "r.yaml"
    recipe_path.write_text(yaml.safe_dump(_recipe(path, {"name": "embed"})))
    with pytest.raises(SystemExit) as info:
        main(["train", str(recipe_path), "--out", str(tmp_path / "run"), "-q"])
    assert info.value.code == 2
    assert "not UTF-8" in capsys.readouterr().err


def test_non_utf8_bytes_name_the_row():
    from dlforge.data.features.text import as_texts

    with pytest.raises(DataError, match="row 1 is not UTF-8"):
        as_texts(np.array([b"fine", b"caf\xe9"], dtype=object), name="text", where="inputs.0")


def test_all_empty_text_is_an_error(tmp_path):
    path = tmp_path / "empty.csv"
    pd.DataFrame({"text": [""] * 20, "label": ["a", "b"] * 10}).to_csv(path, index=False)
    with pytest.raises(DataError, match="empty in every training row"):
        dlforge.train(_recipe(path, {"name": "embed"}), out=tmp_path / "run", progress=False)


def test_ngram_encoder_reads_word_order_through_bigrams(tmp_path):
    """Label = the order of two words ('alpha beta' vs 'beta alpha'): a bag of words cannot tell, bigrams can."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(240):
        first, second = ("alpha", "beta") if i % 2 else ("beta", "alpha")
        filler = list(rng.choice(["the", "film", "was", "plot"], size=2))
        rows.append({"text": " ".join([*filler, first, second]), "label": "ab" if i % 2 else "ba"})
    csv = tmp_path / "order.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    scores = {}
    for n in (1, 2):
        recipe = _recipe(csv, {"name": "ngram", "dim": 16, "ngrams": n, "buckets": 500, "dropout": 0.0})
        recipe["training"]["epochs"] = 15
        scores[n] = dlforge.train(recipe, out=tmp_path / f"run{n}", progress=False).metrics["test"]["accuracy"]
    assert scores[1] <= 0.7 and scores[2] >= 0.95, scores


def test_ngram_hashes_stay_in_the_table_and_skip_padding():
    import torch

    from dlforge.models.encoders.text_ngram import TextNgram
    from dlforge.recipe import TextNgramEncoder

    enc = TextNgram(TextNgramEncoder(dim=4, ngrams=3, buckets=50), {"vocab_size": 30, "pad_id": 0}, None)
    ids = torch.tensor([[2, 5, 7, 0, 0], [2, 29, 0, 0, 0]])
    grams, valid = enc.grams(ids)
    assert grams.shape == (2, 5 + 4 + 3) and int(grams.max()) < 30 + 50 and int(grams.min()) >= 0
    assert valid.sum(1).tolist() == [3 + 2 + 1, 2 + 1 + 0]  # unigrams, bigrams, trigrams without padding
    padded = enc.eval()(torch.tensor([[2, 5, 7, 0, 0, 0, 0]]))
    assert torch.allclose(padded, enc(ids[:1]), atol=1e-6)  # extra padding changes nothing


def test_ngram_default_table_is_small():
    """The default n-gram table: (vocab + 50k buckets) x 32, 2.2M parameters for a 20k vocabulary (it was 14M: 200k x 64,
    which memorised rt_snippets within one epoch and lost to TF-IDF + LR; benchmarks/README.md 'no-recipe text')."""
    from dlforge.models.encoders.text_ngram import TextNgram
    from dlforge.recipe import TextNgramEncoder

    enc = TextNgram(TextNgramEncoder(), {"vocab_size": 20000, "pad_id": 0}, None)
    assert sum(p.numel() for p in enc.parameters()) == (20000 + 50000) * 32 and enc.output_dim == 32


def test_ngram_members_are_independent_bags_whose_probabilities_are_averaged(text_csv):
    """members K: K bags with their own rows in one table, (B, K, dim) out; member k is exactly a one-member bag
    holding the k-th slice of the table; the model scores each member in training and averages their
    probabilities at prediction; the recipe refuses combiners that cannot read members."""
    from dlforge.core.errors import RecipeError
    from dlforge.models.encoders.text_ngram import TextNgram
    from dlforge.models.model import DlforgeModel
    from dlforge.recipe import TextNgramEncoder
    from dlforge.recipe.io import load_recipe

    torch.manual_seed(0)
    signature = {"vocab_size": 30, "pad_id": 0}
    bag = TextNgram(TextNgramEncoder(dim=4, buckets=50, members=3, dropout=0.0), signature, None).eval()
    assert bag.embedding.weight.shape == (30 + 50, 4 * 3) and bag.output_dim == 4
    ids = torch.tensor([[2, 5, 7, 0], [3, 29, 0, 0]])
    out = bag(ids)
    assert out.shape == (2, 3, 4)
    one = TextNgram(TextNgramEncoder(dim=4, buckets=50, dropout=0.0), signature, None).eval()
    with torch.no_grad():
        one.embedding.weight.copy_(bag.embedding.weight[:, 4:8])
    assert torch.allclose(out[:, 1], one(ids), atol=1e-6)
    assert not torch.allclose(out[:, 0], out[:, 1])  # independently initialised rows

    recipe = load_recipe(_recipe(text_csv, {"name": "ngram", "dim": 4, "buckets": 50, "members": 3}))
    model = DlforgeModel(recipe, {"inputs": {"text": signature}, "outputs": {"label": {"size": 1}}})
    x = {"text": ids}
    assert model.train()(x)["label"].shape[:2] == (2, 3)  # training: every member is scored (mean of 3 losses)
    members = model.train(False).heads["label"](model.encode(x))  # (B, 3, 1): the members' logits
    mean = torch.sigmoid(members.float()).mean(1)
    assert torch.allclose(torch.sigmoid(model(x)["label"]), mean, atol=1e-5)  # prediction: mean probability

    for combiner, says in (({"name": "attention"}, "need combiner concat"), ({"name": "concat", "ensemble": 2},
                                                                              "make them equal")):
        bad = {**_recipe(text_csv, {"name": "ngram", "members": 3}), "combiner": combiner}
        with pytest.raises(RecipeError, match=says):
            load_recipe(bad)
