"""`dlforge explain` and `dlforge.explain`: attributions per pixel, token, column and input, the randomisation
sanity check, attention rollout, permutation importance, and the refusals of bad input (exit code 2)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import tabular_recipe

FIXTURES = Path(__file__).parent / "fixtures"
DIGITS = [str(FIXTURES / "seven.png"), str(FIXTURES / "two.png"), str(FIXTURES / "one.png")]

pytest.importorskip("captum")


@pytest.fixture(scope="session")
def text_run(tmp_path_factory) -> Path:
    """A 1-layer transformer on sentences whose label is decided by one word ('good' / 'bad')."""
    import dlforge

    rng = np.random.default_rng(0)
    fillers = ["the", "film", "plot", "was", "quite", "very", "story", "acting", "long", "short", "a", "movie"]
    rows = ["text,label"]
    for i in range(240):
        words = list(rng.choice(fillers, size=5))
        label = "pos" if i % 2 else "neg"
        words.insert(int(rng.integers(0, 6)), "good" if label == "pos" else "bad")
        rows.append(f"{' '.join(words)},{label}")
    folder = tmp_path_factory.mktemp("text")
    (folder / "t.csv").write_text("\n".join(rows) + "\n")
    out = folder / "run"
    dlforge.train({"name": "tiny-text", "data": {"source": str(folder / "t.csv"), "split": {"val": 0.1, "test": 0.2}},
                   "inputs": [{"name": "text", "type": "text",
                               "preprocessing": {"tokenizer": "wordpiece", "vocab_size": 100, "min_frequency": 1,
                                                 "max_length": 12},
                               "encoder": {"name": "transformer", "dim": 16, "heads": 2, "layers": 1, "ff_dim": 32,
                                           "dropout": 0.0, "pooling": "mean"}}],
                   "outputs": [{"name": "label", "type": "binary"}],
                   "training": {"epochs": 8, "batch_size": 32, "optimizer": {"name": "adam", "lr": 0.01}}},
                  out=out, progress=False)
    return out


@pytest.fixture(scope="session")
def tabular_run(tmp_path_factory) -> Path:
    """The conftest tiny table (x1 weighs most in the target), trained a few epochs."""
    import dlforge
    import pandas as pd

    rng = np.random.default_rng(0)
    n = 400
    x1, x2 = rng.normal(size=n), rng.normal(size=n)
    color, flag = rng.choice(["red", "green", "blue"], size=n), rng.choice(["yes", "no"], size=n)
    target = np.where(2 * x1 + 0.3 * x2 + (color == "red") * 0.5 > 0.3, "good", "bad")
    folder = tmp_path_factory.mktemp("tab")
    pd.DataFrame({"x1": x1, "x2": x2, "color": color, "flag": flag, "target": target}).to_csv(folder / "t.csv",
                                                                                                index=False)
    out = folder / "run"
    dlforge.train(tabular_recipe(folder / "t.csv", training={"epochs": 12, "batch_size": 32,
                                                             "optimizer": {"name": "adam", "lr": 0.01}}),
                  out=out, progress=False)
    return out


# ------------------------------------------------------------------------------------------------ images
def test_integrated_gradients_on_images_writes_png_and_npz_and_is_complete(digits_run, tmp_path):
    import dlforge
    from PIL import Image

    result = dlforge.explain(digits_run, DIGITS, method="integrated_gradients", out=tmp_path / "x")
    assert result.attributions["image"].shape == (3, 1, 8, 8) and result.scores["image"].shape == (3, 8, 8)
    # IG's completeness: the attributions add up to f(input) - f(reference); Captum's delta is the gap.
    predictor = dlforge.load(digits_run)
    x = predictor.encode_inputs(DIGITS)["image"]
    with torch.no_grad():
        logits = predictor.model({"image": x})["label"]
        ref = predictor.model({"image": torch.zeros_like(x)})["label"]
    index = torch.tensor([predictor.labels().index(p) for p in result.predicted])
    gain = (logits - ref).gather(1, index[:, None]).squeeze(1).numpy()
    assert np.allclose(result.contributions["image"], gain, atol=0.05 * np.abs(gain).max())
    assert max(result.convergence_delta) < 0.05 * np.abs(gain).max()
    saved = np.load(tmp_path / "x" / "image.npz", allow_pickle=False)
    assert np.allclose(saved["maps"], result.scores["image"])
    png = Image.open(tmp_path / "x" / "image_0.png")
    assert png.size[0] > 2 * png.size[1] - 20 and png.size[1] >= 8 * 28  # input and overlay side by side, enlarged
    summary = json.loads((tmp_path / "x" / "explanation.json").read_text())
    assert summary["method"] == "integrated_gradients" and len(summary["rows"]) == 3
    assert "spearman" in summary["sanity"] and "image_2.png" in summary["files"]


def test_every_image_method_gives_a_map_of_the_input_shape(digits_run):
    import dlforge

    predictor = dlforge.load(digits_run)
    for method in ("saliency", "occlusion", "gradient_shap", "grad_cam"):
        result = dlforge.explain(predictor, DIGITS[:2], method=method, sanity=False, target="7")
        assert result.attributions["image"].shape == (2, 1, 8, 8), method
        assert np.abs(result.scores["image"]).sum() > 0, method
        assert result.explained == ["7", "7"]
    assert (dlforge.explain(predictor, DIGITS[:1], method="grad_cam", sanity=False).scores["image"] >= 0).all()


def test_saliency_of_the_trained_model_differs_clearly_from_a_randomised_one(digits_run):
    """Adebayo et al. 2018: a map that explains the model changes when its weights are re-initialised."""
    import dlforge

    result = dlforge.explain(digits_run, DIGITS, method="saliency")
    assert result.sanity["spearman"] < 0.5, result.sanity
    assert result.sanity["warning"] is None and result.warnings == []
    assert any(name.startswith("heads.") for name in result.sanity["randomised"])


def test_a_map_that_ignores_the_model_is_flagged(digits_run, monkeypatch):
    """The check's positive control: a 'method' that returns the input (an edge detector would do the same)."""
    import dlforge
    from dlforge.explain.methods import Method, methods

    def input_itself(forward, inputs, refs, target, ids, spaces, options):
        return tuple(v.detach().clone() for v in inputs)

    monkeypatch.setitem(methods._items, "input_copy", Method(input_itself, signed=True))
    result = dlforge.explain(digits_run, DIGITS, method="input_copy")
    assert result.sanity["spearman"] > 0.99
    assert "barely changes" in result.sanity["warning"]


# ------------------------------------------------------------------------------------------------ text
def test_text_tokens_highlighted_and_the_deciding_word_leads(text_run, tmp_path):
    import dlforge

    result = dlforge.explain(text_run, ["the plot good very long", "a bad movie quite short"], attention=True,
                             out=tmp_path / "t")
    assert result.predicted == ["pos", "neg"]
    for row, word in enumerate(["good", "bad"]):
        tokens = result.tokens["text"][row]
        scores = result.scores["text"][row][:len(tokens)]
        assert tokens[0] == "[CLS]" and word in tokens
        assert tokens[int(np.argmax(scores))] == word, (tokens, scores)  # evidence for the predicted label
    page = (tmp_path / "t" / "text.html").read_text()
    assert "good" in page and "<script" not in page and "http" not in page  # self-contained, no external assets
    attention = result.attention["text"]
    assert attention["maps"].shape[:3] == (1, 2, 2)  # layers, rows, heads
    rolled = attention["rollout"]
    real = len(result.tokens["text"][0])
    assert np.allclose(rolled[0, :real].sum(-1), 1.0, atol=1e-5)
    assert (tmp_path / "t" / "text_rollout_0.png").is_file()


def test_attention_rollout_matches_a_hand_computed_product():
    from dlforge.explain.attention import rollout

    a1 = torch.tensor([[[[0.5, 0.5], [0.0, 1.0]]]])  # (1 row, 1 head, 2, 2)
    a2 = torch.tensor([[[[1.0, 0.0], [0.5, 0.5]]]])
    eye = torch.eye(2)
    expected = (0.5 * a2[0, 0] + 0.5 * eye) @ (0.5 * a1[0, 0] + 0.5 * eye)
    assert torch.allclose(rollout([a1, a2], torch.ones(1, 2, dtype=torch.bool))[0], expected)


# ------------------------------------------------------------------------------------------------ tables
def test_tabular_rows_get_one_attribution_per_column_categories_included(tabular_run, tmp_path):
    import dlforge
    import pandas as pd

    rows = pd.DataFrame({"x1": [2.0, -2.0], "x2": [0.0, 0.0], "color": ["red", "blue"], "flag": ["yes", "no"]})
    result = dlforge.explain(tabular_run, rows, out=tmp_path / "tab")
    assert result.predicted == ["good", "bad"]
    assert set(result.scores) == {"x1", "x2", "color", "flag"}
    assert all(v.shape == (2,) for v in result.scores.values())
    for row in range(2):  # x1 (weight 2 in the target) decides both rows
        assert max(result.shares, key=lambda n: result.shares[n][row]) == "x1"
    table = pd.read_csv(tmp_path / "tab" / "attributions.csv")
    assert list(table["color"]) == ["red", "blue"] and "attribution_color" in table
    assert np.allclose(table["attribution_x1"], result.scores["x1"], rtol=1e-4)


def test_global_permutation_importance_ranks_the_deciding_column_first(tabular_run, cli, tmp_path):
    code, out, _ = cli("explain", tabular_run, "--global", "--out", tmp_path / "g")
    assert code == 0
    found = json.loads((tmp_path / "g" / "importance.json").read_text())
    ranking = list(found["importance"])
    assert ranking[0] == "x1" and found["importance"]["x1"]["mean"] > 0.1
    assert found["metric"] == "accuracy" and found["rows"] > 0
    assert "x1" in out


# ------------------------------------------------------------------------------------------------ multimodal
@pytest.mark.slow
def test_multimodal_shares_show_the_deciding_input(tmp_path):
    """Image noise, a number of noise, and a text whose one word decides: the text must carry the explanation."""
    import dlforge
    from PIL import Image

    rng = np.random.default_rng(0)
    rows = ["file,caption,size,label"]
    for i in range(120):
        path = tmp_path / f"im{i}.png"
        Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(path)
        label = "yes" if i % 2 else "no"
        rows.append(f"{path.name},{'a sunny' if label == 'yes' else 'a rainy'} day,{rng.normal():.3f},{label}")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    dlforge.train({"name": "mm", "data": {"source": str(tmp_path / "m.csv"), "split": {"val": 0.1, "test": 0.2}},
                   "inputs": [{"name": "file", "type": "image", "preprocessing": {"size": [12, 12]},
                               "encoder": {"name": "cnn", "channels": [4], "dense": [8]}},
                              {"name": "caption", "type": "text", "preprocessing": {"min_frequency": 1},
                               "encoder": {"name": "embed", "dim": 8}},
                              {"name": "size", "type": "number"}],
                   "outputs": [{"name": "label", "type": "category"}],
                   "training": {"epochs": 15, "batch_size": 16, "optimizer": {"name": "adam", "lr": 0.01}}},
                  out=tmp_path / "run", progress=False)
    result = dlforge.explain(tmp_path / "run", {"file": [str(tmp_path / "im1.png"), str(tmp_path / "im2.png")],
                                                "caption": ["a sunny day", "a rainy day"], "size": [0.1, -0.3]},
                             out=tmp_path / "x")
    assert result.predicted == ["yes", "no"]
    assert set(result.shares) == {"file", "caption", "size"}
    assert all(result.shares["caption"] > 0.5)
    assert {"file_0.png", "caption.html", "attributions.csv"} <= {p.name for p in (tmp_path / "x").iterdir()}


# ------------------------------------------------------------------------------------------------ bad input
def test_cli_explains_into_the_run_directory(digits_run, cli):
    code, out, err = cli("explain", digits_run, DIGITS[0], "--method", "saliency")
    assert code == 0, err
    assert "predicted 7" in out and "Spearman" in out
    assert (digits_run / "explanations" / "image_0.png").is_file()


@pytest.mark.parametrize("args, expected", [
    (["--text", "a quietly devastating film"], ["does not take one text", "image (image 1x8x8)"]),
    ([DIGITS[0], "--target", "eleven"], ["'eleven' does not exist", "labels: 0, 1, 2"]),
    ([DIGITS[0], "--method", "lime"], ["'lime' does not apply to this image model", "valid: integrated_gradients, "
                                       "saliency, occlusion, gradient_shap, grad_cam"]),
    ([DIGITS[0], "--attention"], ["--attention needs a text input"]),
    ([], ["give one of: image files, --text, or --data"]),
])
def test_bad_input_to_an_image_model_exits_2_naming_what_fits(digits_run, cli, args, expected):
    code, out, err = cli("explain", digits_run, *args)
    assert code == 2
    for text in expected:
        assert text in err, err


def test_bad_input_to_a_text_model_exits_2(text_run, cli):
    code, _, err = cli("explain", text_run, DIGITS[0])
    assert code == 2 and "does not take one image" in err and "--text" in err
    code, _, err = cli("explain", text_run, "--text", "good", "--method", "grad_cam")
    assert code == 2 and "valid: integrated_gradients, saliency, occlusion, gradient_shap" in err
    code, _, err = cli("explain", text_run, "--text", "good", "--target", "maybe")
    assert code == 2 and "labels: neg, pos" in err


def test_python_api_refuses_text_for_an_image_model(digits_run):
    import dlforge
    from dlforge.core.errors import PredictError

    with pytest.raises(PredictError, match="explains images") as info:
        dlforge.explain(digits_run, ["a quietly devastating film"])
    assert "image 1x8x8" in info.value.hint


@pytest.mark.slow
def test_minilm_attention_maps_and_rollout_from_the_eager_path():
    """MiniLM's SDPA kernels return no weights: the eager path gives them, and the model goes back to SDPA."""
    pytest.importorskip("transformers")
    from dlforge.explain.attention import attention_maps, rollout
    from dlforge.models import build_model
    from dlforge.recipe.io import load_recipe

    recipe = load_recipe({"data": {"source": "x.csv"}, "inputs": [{"name": "text", "type": "text",
                                                                    "encoder": {"name": "minilm"}}],
                          "outputs": [{"name": "y", "type": "binary"}]})
    signature = {"inputs": {"text": {"type": "text", "vocab_size": 30522, "max_length": 16, "pad_id": 0}},
                 "outputs": {"y": {"type": "binary", "labels": ["n", "y"], "size": 1}}}
    encoder = build_model(recipe, signature).encoders["text"].eval()
    before = encoder.backbone.config._attn_implementation
    ids = torch.tensor([[101, 1037, 2204, 3185, 102, 0, 0]])
    maps = attention_maps(encoder, "minilm", ids, 0)
    assert len(maps) == 6 and maps[0].shape == (1, 12, 7, 7)
    assert torch.allclose(maps[0].sum(-1), torch.ones(1, 12, 7), atol=1e-4)
    assert float(maps[0][..., 5:].abs().max()) < 1e-6  # padding keys get no attention
    assert encoder.backbone.config._attn_implementation == before
    rolled = rollout(maps, ids != 0)
    assert torch.allclose(rolled[0, :5].sum(-1), torch.ones(5), atol=1e-5)

    # Token IG in chunks that hold only the shorter row: MiniLM trims such a chunk further; the swapped-in
    # embeddings must follow (this failed with a shape error before).
    from dlforge.explain.methods import Options, methods
    from dlforge.explain.spaces import SpaceForward, baselines, build_spaces, embed

    model = build_model(recipe, signature).eval()
    spaces = build_spaces(model, signature, recipe)
    x = {"text": torch.tensor([[101, 1037, 2204, 3185, 2307, 102], [101, 2204, 102, 0, 0, 0]])}
    forward = SpaceForward(model, spaces, "y", "binary")
    found = methods.get("integrated_gradients").fn(
        forward, embed(model, spaces, x), baselines(model, spaces, x, {"text": [0, 101, 102]}), torch.tensor([1, 1]),
        forward.id_args(x), spaces, Options(n_steps=4, internal_batch_size=3))
    forward.close()
    assert found[0].shape == (2, 6, 384) and float(found[0][1, 3:].detach().abs().max()) == 0.0


def test_kernel_shap_gives_column_shapley_values_that_agree_with_integrated_gradients(tabular_run, tmp_path):
    import dlforge
    import pandas as pd

    rows = pd.DataFrame({"x1": [2.0, -2.0], "x2": [0.5, 0.0], "color": ["red", "blue"], "flag": ["yes", "no"]})
    shap = dlforge.explain(tabular_run, rows, method="kernel_shap", out=tmp_path / "shap", sanity=False)
    ig = dlforge.explain(tabular_run, rows, method="integrated_gradients", out=tmp_path / "ig", sanity=False)
    assert set(shap.scores) == {"x1", "x2", "color", "flag"}
    for row in range(2):  # x1 decides both rows, and the two estimators agree on its sign
        assert max(shap.shares, key=lambda n: shap.shares[n][row]) == "x1"
        assert np.sign(shap.scores["x1"][row]) == np.sign(ig.scores["x1"][row]) != 0
    again = dlforge.explain(tabular_run, rows, method="kernel_shap", out=tmp_path / "shap2", sanity=False)
    assert np.allclose(again.scores["x1"], shap.scores["x1"])  # seeded coalitions: the same values every call


def test_mistakes_are_explained_and_the_report_says_why_beside_each(tabular_run, cli, tmp_path):
    import json
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tabular_run, run)
    mistakes = json.loads((run / "mistakes.json").read_text())["rows"]
    assert mistakes, "the tiny table's run has mistakes to explain"
    code, out, _ = cli("explain", run, "--mistakes", "--no-sanity")
    assert code == 0
    why = json.loads((run / "explanations" / "mistakes" / "mistakes.json").read_text())["rows"]
    assert [r["row"] for r in why] == [r["row"] for r in mistakes]  # the same rows, read back from the data
    assert all(r["predicted"] == m["predicted"] for r, m in zip(why, mistakes))
    assert cli("report", run).returncode == 0
    page = (run / "report.html").read_text()
    assert "why (share of the explanation)" in page and f"{why[0]['top'][0][0]} " in page
    (run / "mistakes.json").unlink()
    code, _, err = cli("explain", run, "--mistakes")
    assert code == 2 and "mistakes.json does not exist" in err
