"""The runtime seam and the per-type seam: one forward-pass interface, one CSV → inputs path, input kinds
that own their behaviour at the edges, one image opener with the pixel guard, one missing-value predicate."""

import sys

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import dlforge
from dlforge.artifact.runtimes import Runtime, TorchRuntime, runtimes
from dlforge.cli import main
from dlforge.core.errors import DataError, DlforgeError
from dlforge.data.features import input_features, input_kinds, kind_of
from dlforge.data.features.base import is_missing, missing_mask
from dlforge.data.features.wire import PASS_THROUGH, InputKind

CALLS: list[int] = []


@runtimes.register("test-counting")
def counting_runtime(*, model, run_dir, batch_size, threads=None):
    """Torch, counting rows: proves that predict, evaluate and serve all run through the selected runtime."""
    inner = TorchRuntime(model, batch_size=batch_size)

    class Counting:
        name = "test-counting"

        def run(self, x):
            CALLS.append(len(next(iter(x.values()))))
            return inner.run(x)

    return Counting()


def _image_csv(folder, n=16, size=(10, 12)):
    """`n` small PNGs under folder/img/ and folder/files.csv naming them relative to the CSV: dark 'a', bright 'b'."""
    rng = np.random.default_rng(0)
    (folder / "img").mkdir(parents=True)
    rows = []
    for i in range(n):
        label = "b" if i % 2 else "a"
        pixels = np.clip((210 if label == "b" else 40) + rng.normal(0, 15, (*size, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / "img" / f"{i}.png")
        rows.append({"file": f"img/{i}.png", "label": label})
    pd.DataFrame(rows).to_csv(folder / "files.csv", index=False)
    return folder / "files.csv"


def _image_recipe(csv, **prep):
    return {"name": "files", "data": {"source": str(csv), "split": {"val": 0.25, "test": 0.0, "seed": 0}},
            "inputs": [{"name": "file", "type": "image", "preprocessing": {"size": [6, 6], **prep},
                        "encoder": {"name": "cnn", "channels": [4], "padding": "same", "dense": [4]}}],
            "outputs": [{"name": "label", "type": "category"}],
            "training": {"epochs": 4, "batch_size": 8, "optimizer": {"name": "adam", "lr": 0.02}}}


@pytest.fixture(scope="module")
def image_file_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("files")
    csv = _image_csv(root / "data")
    dlforge.train(_image_recipe(csv), out=root / "run", progress=False)
    return root / "run", csv


# ---------------------------------------------------------------- runtimes
def test_predictor_runs_through_the_selected_runtime(digits_run):
    from dlforge.serve.runtime import ModelRuntime

    assert "torch" in runtimes.names()
    default = dlforge.load(digits_run)
    assert isinstance(default.runtime, Runtime) and default.runtime.name == "torch"
    counted = dlforge.load(digits_run, runtime="test-counting")
    images = np.zeros((3, 8, 8), dtype=np.uint8)
    CALLS.clear()
    assert list(counted.predict(images)) == list(default.predict(images))
    counted.predict_proba(images)
    ModelRuntime(counted).warm_up(rounds=1)
    assert CALLS == [3, 3, 1]  # predict, predict_proba, the server's warm-up row


def test_unknown_runtime_lists_the_known_ones(digits_run):
    with pytest.raises(DlforgeError, match=r"unknown runtime 'tensorrt'; known: onnx, .*torch"):
        dlforge.load(digits_run, runtime="tensorrt")


# ---------------------------------------------------------------- one CSV → inputs path
def test_evaluate_and_predict_data_resolve_image_paths_against_the_csv(image_file_run, tmp_path, monkeypatch,
                                                                      capsys):
    run, csv = image_file_run
    monkeypatch.chdir(tmp_path)  # elsewhere: relative paths only work against the CSV's folder
    metrics = dlforge.evaluate(run, data=csv)
    main(["predict", str(run), "--data", str(csv), "--output", str(tmp_path / "p.csv")])
    predicted = pd.read_csv(tmp_path / "p.csv")
    assert list(predicted["file"]) == [f"img/{i}.png" for i in range(16)]  # the user's column, as written
    truth = ["b" if i % 2 else "a" for i in range(16)]
    assert metrics["accuracy"] == pytest.approx(np.mean(predicted["predicted_label"].to_numpy() == np.array(truth)))
    # Python callers get the same path: a table read from the file
    from dlforge.data.readers import load_table

    assert list(dlforge.load(run).predict(load_table(str(csv)))) == list(predicted["predicted_label"])


def test_evaluate_data_names_a_missing_column(image_file_run, tmp_path):
    run, csv = image_file_run
    pd.read_csv(csv).drop(columns=["label"]).to_csv(tmp_path / "nolabel.csv", index=False)
    with pytest.raises(DataError, match="column 'label' named at the model's output 'label' is not in the data"):
        dlforge.evaluate(run, data=tmp_path / "nolabel.csv")


# ---------------------------------------------------------------- one image opener (pixel guard)
def test_oversized_image_file_is_refused_or_skipped_with_the_pixel_limit(tmp_path, monkeypatch):
    import dlforge.data.images.decode as decode

    csv = _image_csv(tmp_path / "data", n=12)
    Image.fromarray(np.zeros((30, 30, 3), np.uint8)).save(tmp_path / "data" / "img" / "0.png")  # 900 pixels
    monkeypatch.setattr(decode, "MAX_PIXELS", 500)  # the others have 120
    with pytest.raises(DataError, match=r"image of 30x30 pixels exceeds the limit of 500") as err:
        dlforge.train(_image_recipe(csv), out=tmp_path / "run", progress=False)
    assert "on_bad_file" in err.value.where
    result = dlforge.train(_image_recipe(csv, on_bad_file="skip"), out=tmp_path / "run", progress=False)
    assert result.metrics["data"]["images"]["file"]["skipped_bad_files"] == 1
    with pytest.raises(DataError, match="exceeds the limit of 500"):  # predicting decodes with the same guard
        dlforge.load(result.run_dir).predict([str(tmp_path / "data" / "img" / "0.png")])


# ---------------------------------------------------------------- input kinds
def test_every_input_type_has_a_kind_and_unknown_types_pass_through():
    assert set(input_features.names()) <= set(input_kinds.names())
    assert kind_of({"type": "audio-from-the-future"}) is PASS_THROUGH
    column = PASS_THROUGH.request_column([[1, 2], "x"], {"type": "x"})
    assert column.dtype == object and column[0] == [1, 2]
    assert kind_of("image").file_input and not kind_of("number").file_input


def test_a_new_input_kind_is_used_by_the_api_schema_and_the_server_sample():
    from typing import Annotated

    from pydantic import Field

    from dlforge.serve.schema import build_request_models, field_type, multipart_schema

    @input_kinds.register("test-hex-colour")
    class HexColour(InputKind):
        def api_field(self, name, sig):
            return Annotated[str, Field(pattern=r"^#[0-9a-f]{6}$")], Field(..., alias=name)

        def form_part(self, sig):
            return {"type": "string", "pattern": "^#[0-9a-f]{6}$"}

        def sample(self, sig):
            return "#000000"

    signature = {"inputs": {"colour": {"type": "test-hex-colour"}}, "outputs": {"y": {"type": "number"}}}
    record, _ = build_request_models(signature, max_records=4)
    assert record.model_json_schema()["properties"]["colour"]["pattern"] == "^#[0-9a-f]{6}$"
    assert record.model_validate({"colour": "#00ff00"}).input_0 == "#00ff00"
    with pytest.raises(Exception, match="pattern"):
        record.model_validate({"colour": "green"})
    assert multipart_schema(signature)["properties"]["colour"]["pattern"] == "^#[0-9a-f]{6}$"
    assert field_type("c", {"type": "number"})[1].alias == "c"


def test_python_and_request_coercion_per_kind():
    number, image, sequence = kind_of("number"), kind_of("image"), kind_of("sequence")
    assert np.isnan(number.request_column([1.5, None], {})[1])
    assert number.form_value(" ") is None and number.form_value("2.5") == 2.5
    with pytest.raises(ValueError, match="valid number"):
        number.form_value("abc")
    assert kind_of("category").form_value(b"caf\xc3\xa9") == "café" and kind_of("binary").form_value("") is None
    sig = {"type": "image", "shape": [3, 4, 5]}
    assert image.sample(sig).shape == (4, 5, 3)
    assert image.request_column([image.sample(sig)] * 2, sig).shape == (2, 4, 5, 3)
    assert image.python_column(np.zeros((4, 5, 3)), sig, "x").shape == (1, 4, 5, 3)  # one image gets a batch axis
    assert sequence.python_column([1, 2, 3], {"type": "sequence", "channels": 1}, "s").shape == (1, 3)
    assert sequence.sample({"type": "sequence", "length": 4}) == "0 0 0 0"


def test_a_sequence_run_serves_after_warm_up(tmp_path):
    from dlforge.serve.runtime import ModelRuntime, Records

    rng = np.random.default_rng(0)
    up = rng.random(40) < 0.5
    ramps = [(np.linspace(0, 1, 12) if u else np.linspace(1, 0, 12)) + rng.normal(0, 0.1, 12) for u in up]
    series = [" ".join(f"{v:.2f}" for v in ramp) for ramp in ramps]
    pd.DataFrame({"s": series, "y": np.where(up, "up", "down")}).to_csv(tmp_path / "s.csv", index=False)
    recipe = {"name": "seq", "data": {"source": str(tmp_path / "s.csv"), "split": {"val": 0.2, "test": 0.0}},
              "inputs": [{"name": "s", "type": "sequence",
                          "encoder": {"name": "cnn", "channels": [4], "kernel_sizes": [3]}}],
              "outputs": [{"name": "y", "type": "category"}], "training": {"epochs": 1, "batch_size": 8}}
    dlforge.train(recipe, out=tmp_path / "run", progress=False)
    runtime = ModelRuntime(dlforge.load(tmp_path / "run"))
    runtime.warm_up(rounds=1)  # the sample row was "warm up", which no sequence parses
    rows = runtime.run([Records({"s": ["0 0.5 1", [1, 0.5, 0]]}, 2)])[0]
    assert [r["label"] in ("up", "down") for r in rows] == [True, True]


# ---------------------------------------------------------------- text without `tokenizers`
@pytest.mark.parametrize("kind", ["bpe", "wordpiece"])
def test_plain_tokenizer_matches_tokenizers(kind):
    from dlforge.data.features.plain_tokenizer import PlainTokenizer
    from dlforge.data.features.text import new_tokenizer, new_trainer

    texts = ["The café is naïve, isn't it? Yes!!", "ÉCOLE élève \u4e2d\u6587 123.45 e-mail@x.org",
             "tabs\tand\nnew lines", "[CLS] inside [UNK]", "zero\u200bwidth \x00 nul", "unseen zzqq ŁÓDŹ", "",
             "straße ½"]
    corpus = [f"word{i % 37} the cafe naive yes ecole eleve lines" for i in range(200)] + texts
    for lowercase in (True, False):
        tok = new_tokenizer(kind, lowercase)
        tok.train_from_iterator(corpus, trainer=new_trainer(kind, 120, 1))
        plain = PlainTokenizer.from_str(tok.to_str())
        assert plain.get_vocab_size() == tok.get_vocab_size()
        for text in texts + corpus[:20]:
            assert plain.encode(text).ids == tok.encode(text, add_special_tokens=False).ids, text


def test_plain_tokenizer_refuses_other_pipelines_with_the_install_line():
    from dlforge.core.errors import ArtifactError
    from dlforge.data.features.plain_tokenizer import PlainTokenizer

    state = {"model": {"type": "Unigram", "vocab": []}, "normalizer": {"type": "NFKC"}, "pre_tokenizer": None}
    with pytest.raises(ArtifactError) as err:
        PlainTokenizer(state)
    assert err.value.hint == "pip install 'dlforge[text]'"


def test_text_run_loads_and_serves_without_tokenizers(tmp_path, monkeypatch):
    from dlforge.serve.runtime import ModelRuntime, Records

    words = ["great film", "awful plot", "loved it", "boring and dull", "superb acting", "terrible ending"]
    texts = [words[i % 6] + " the end" for i in range(48)]
    labels = ["pos" if i % 2 == 0 else "neg" for i in range(48)]
    pd.DataFrame({"t": texts, "y": labels}).to_csv(tmp_path / "t.csv", index=False)
    recipe = {"name": "text", "data": {"source": str(tmp_path / "t.csv"), "split": {"val": 0.2, "test": 0.0}},
              "inputs": [{"name": "t", "type": "text", "encoder": {"name": "embed", "dim": 8},
                          "preprocessing": {"vocab_size": 100, "min_frequency": 1, "max_length": 8}}],
              "outputs": [{"name": "y", "type": "binary"}], "training": {"epochs": 2, "batch_size": 8}}
    dlforge.train(recipe, out=tmp_path / "run", progress=False)
    job = Records({"t": ["great film, the end!", "", "unseen wörds"]}, 3)
    with_rust = ModelRuntime(dlforge.load(tmp_path / "run")).run([job])[0]
    monkeypatch.setitem(sys.modules, "tokenizers", None)  # `import tokenizers` now raises ImportError
    predictor = dlforge.load(tmp_path / "run")
    assert type(predictor.inputs["t"].tokenizer_).__name__ == "PlainTokenizer"
    runtime = ModelRuntime(predictor)
    runtime.warm_up(rounds=1)
    assert runtime.run([job])[0] == with_rust


# ---------------------------------------------------------------- one missing-value predicate, one augmentation answer
def test_missing_values_have_one_definition():
    assert [is_missing(v) for v in (None, float("nan"), np.float32("nan"), "", 0, "nan")] == [
        True, True, True, False, False, False]
    assert missing_mask(np.array([1.0, np.nan])).tolist() == [False, True]
    assert missing_mask(np.array(["a", None, np.nan], dtype=object)).tolist() == [False, True, True]
    assert missing_mask(np.array([1, 2])).tolist() == [False, False]


def test_augmentation_on_is_the_one_answer():
    from dlforge.data.augment import augmentation_on
    from dlforge.recipe.io import validate

    def recipe(image_aug=None, text_aug=None):
        inputs = [{"name": "i", "type": "image", **({"augmentation": image_aug} if image_aug is not None else {})},
                  {"name": "t", "type": "text", **({"augmentation": text_aug} if text_aug is not None else {})},
                  {"name": "n", "type": "number"}]
        return validate({"name": "x", "data": {"source": "x.csv"}, "inputs": inputs,
                         "outputs": [{"name": "y", "type": "category"}]})

    assert [augmentation_on(f) for f in recipe().inputs] == [False, False, False]
    assert augmentation_on(recipe({"fill": "zeros"}).inputs[0]) is False  # fill alone moves no pixel
    assert augmentation_on(recipe({"flip": "horizontal"}).inputs[0]) is True
    assert augmentation_on(recipe({"mixup": 0.2}).inputs[0]) is True
    assert augmentation_on(recipe(text_aug={"token_dropout": 0.1}).inputs[1]) is True

