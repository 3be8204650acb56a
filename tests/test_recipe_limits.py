"""A recipe is untrusted text: size, encoding, depth and alias limits hold before any work, duplicate keys are
errors, and every bad file ends in one RecipeError (exit 2), never a traceback, a hang or gigabytes of memory."""

import os
import re
import time

import pytest
import yaml

from dlforge import RecipeError, load_recipe
from dlforge.recipe.io import MAX_DEPTH, parse_yaml
from conftest import digits_recipe

GOOD = yaml.safe_dump(digits_recipe(), sort_keys=False)


def laughs(levels: int, width: int = 10) -> str:
    """The 'billion laughs' document: each level repeats the previous one `width` times."""
    lines = ["l0: &l0 [" + ", ".join(["lol"] * width) + "]"]
    lines += [f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * width) + "]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def test_alias_bomb_is_refused_before_expansion():
    started = time.perf_counter()
    with pytest.raises(RecipeError, match=r"line \d+: more than 100,000 values once its aliases are expanded"):
        parse_yaml(GOOD + laughs(9), origin="r.yaml")  # 10**9 leaves if expanded
    assert time.perf_counter() - started < 1.0


def test_a_few_aliases_still_work():
    data, lines = parse_yaml("enc: &e {name: cnn, channels: [8]}\na: *e\nb: {<<: *e, channels: [4]}\n", origin="r")
    assert data["a"] == {"name": "cnn", "channels": [8]} and data["b"] == {"name": "cnn", "channels": [4]}
    assert lines[("b",)] == 3


def test_self_referencing_alias_is_an_error():
    with pytest.raises(RecipeError, match=r"alias \*x refers to the node that contains it"):
        parse_yaml("name: &x [1, *x]\n", origin="r.yaml")


@pytest.mark.parametrize("text", ["a: " + "[" * 600 + "]" * 600,
                                  "".join(" " * i + f"k{i}:\n" for i in range(600)),
                                  "a: " + "{b: " * 600 + "1" + "}" * 600])
def test_deep_nesting_is_an_error_not_a_recursion_error(text):
    with pytest.raises(RecipeError, match=f"nested more than {MAX_DEPTH} levels deep"):
        parse_yaml(text, origin="r.yaml")


def test_deep_nesting_through_aliases_is_an_error():
    text = "a0: &a0 [1]\n" + "".join(f"a{i}: &a{i} [*a{i - 1}]\n" for i in range(1, 80))
    with pytest.raises(RecipeError, match="levels deep once its aliases are expanded"):
        parse_yaml(text, origin="r.yaml")


def test_duplicate_keys_are_an_error_not_last_wins(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(GOOD + "training:\n  seed: 3\n")
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    assert "key 'training' appears twice in one section (first at line" in str(info.value)
    path.write_text("name: a\ndata: {source: builtin:digits, source: x.csv}\n")
    with pytest.raises(RecipeError, match="key 'source' appears twice"):
        load_recipe(path)


@pytest.mark.parametrize("encoding", ["utf-16", "utf-8-sig", "utf-32"])
def test_recipe_with_a_byte_order_mark_is_read(tmp_path, encoding):
    path = tmp_path / "r.yaml"
    path.write_bytes(GOOD.encode(encoding))
    assert load_recipe(path).name == "tiny-digits"


def test_non_utf8_recipe_names_the_byte_and_line(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_bytes(b"name: caf\xe9\ndata: {source: builtin:digits}\n")
    with pytest.raises(RecipeError, match=r"not UTF-8 text \(byte 9, line 1"):
        load_recipe(path)
    path.write_bytes("name: x\n".encode("utf-16-le"))  # UTF-16 without a BOM: NUL bytes
    with pytest.raises(RecipeError):
        load_recipe(path)


def test_oversized_and_special_recipe_files_are_refused(tmp_path):
    big = tmp_path / "big.yaml"
    big.write_text("name: x\n" + "# padding\n" * 200_000)
    with pytest.raises(RecipeError, match="a recipe is at most"):
        load_recipe(big)
    fifo = tmp_path / "pipe.yaml"
    os.mkfifo(fifo)  # reading it would block forever
    with pytest.raises(RecipeError, match="not a regular file"):
        load_recipe(fifo)
    with pytest.raises(RecipeError, match="this is data, not a recipe"):
        load_recipe(tmp_path)  # a folder: an image-folder dataset given where the recipe belongs


def test_set_values_obey_the_same_limits():
    with pytest.raises(RecipeError, match="aliases are expanded"):
        load_recipe(digits_recipe(), ["name=" + "{" + laughs(7).replace("\n", ", ") + "}"])


# ---------------------------------------------------------------- `recipe check` refuses what training would
@pytest.mark.parametrize("override, message", [
    ("training.epochs=true", "training.epochs: true/false is not a valid value here"),
    ("training.optimizer.lr=false", "training.optimizer.lr: true/false is not a valid value here"),
    ("inputs.0.encoder.channels=[8, true]", "inputs.0.encoder.channels: true/false is not a valid value here"),
    ("training.seed=36893488147419103232", "training.seed: input should be less than or equal to"),
    ("data.split.seed=-1", "data.split.seed: input should be greater than or equal to 0"),
    ("training.threads=2147483648", "training.threads: input should be less than or equal to 1024"),
    ("inputs.0.preprocessing.size=[100000, 100000]", "inputs.0.preprocessing.size.0: input should be less than"),
    ("name=" + "x" * 300, "name: string should have at most 100 characters"),
    ("name=../../elsewhere", "name: '../../elsewhere' is not a folder name"),
    ("inputs.0.augmentation={random_resized_crop: {scale: [1.0, 0.5]}}",
     "inputs.0.augmentation.random_resized_crop.scale: [1.0, 0.5] is inverted"),
    ("training.precision=fp16", "training.precision: precision fp16 needs a CUDA GPU"),
    ("outputs.0.class_weights={'1': 2.0, nope: 3.0}",
     "outputs.0.class_weights: class_weights names label(s) ['nope'] that are not in the training data"),
])
def test_recipe_check_refuses_what_training_would(capsys, override, message):
    import torch

    from dlforge.cli import main

    if "fp16" in override and torch.cuda.is_available():
        pytest.skip("fp16 is valid on a GPU")
    with pytest.raises(SystemExit) as exit_info:
        main(["recipe", "check", "--set", override, "--set", "training.epochs=1"]
             if "epochs" not in override else ["recipe", "check", "--set", override])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert err.startswith("error: ") and "Traceback" not in err
    assert message in re.sub(r" \(line \d+\)", "", err)  # the YAML line of the field is named too


def test_a_good_recipe_still_passes_with_numbers_written_as_floats():
    recipe = load_recipe(digits_recipe(optimizer={"name": "adam", "lr": 1}, grad_clip=1))  # ints for floats: fine
    assert recipe.training.optimizer.lr == 1.0 and recipe.training.grad_clip == 1.0
    assert load_recipe(digits_recipe(compile=False)).training.compile is False


@pytest.mark.parametrize("encoder, preprocessing", [({"name": ["mobilenet_v2"]}, None),
                                                    ({"name": "mobilenet_v2"}, [224, 224]),
                                                    ({"name": "mobilenet_v2"}, "big")])
def test_wrong_types_under_a_backbone_are_recipe_errors(encoder, preprocessing):
    """Found by the long fuzz profile: `encoder: {name: [..]}` was a TypeError in a before-validator."""
    recipe = digits_recipe()
    recipe["inputs"][0]["encoder"] = encoder
    if preprocessing is not None:
        recipe["inputs"][0]["preprocessing"] = preprocessing
    with pytest.raises(RecipeError, match=r"inputs\.0\.(encoder|preprocessing)"):
        load_recipe(recipe)
