"""`dlforge init`: column typing with a comment per choice, refusals that say what to write, recipes that train."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

import dlforge
from dlforge.cli import main
from dlforge.data.table import Table
from dlforge.core.errors import DataError
from dlforge.workflows.init import infer_recipe, init
from conftest import main_ok, DATA, needs_data


@pytest.fixture
def mixed_csv(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    n = 120
    (tmp_path / "img").mkdir()
    for i in range(n):
        Image.fromarray(np.full((8, 8, 3), 40 * (i % 5), np.uint8)).save(tmp_path / "img" / f"{i}.png")
    y = rng.integers(0, 2, n)
    frame = pd.DataFrame({
        "row_id": np.arange(n), "amount": rng.normal(size=n) + y, "color": rng.choice(["r", "g", "b", "k"], n),
        "flag": rng.choice(["yes", "no"], n), "note": [f"this item was {'great' if v else 'poor'} value {i}" for i, v in enumerate(y)],
        "photo": [f"img/{i}.png" for i in range(n)], "signal": [" ".join(map(str, rng.normal(size=6).round(2))) for _ in range(n)],
        "constant": "same", "empty": np.nan, "target_copy": np.where(y, "Y", "N"), "target": np.where(y, "good", "bad")})
    path = tmp_path / "mixed.csv"
    frame.to_csv(path, index=False)
    return path


def test_types_and_comments(mixed_csv):
    text = init(str(mixed_csv), "target")
    lines = {line.split("name: ")[1].split(",")[0]: line for line in text.splitlines() if "{name: " in line}
    expected = {"amount": "type: number", "color": "type: category", "flag": "type: binary", "note": "type: text",
                "photo": "type: image", "signal": "type: sequence", "target": "type: binary"}
    for column, kind in expected.items():
        assert kind in lines[column] and "  # " in lines[column], lines[column]
    assert "#   row_id: id-like" in text and "#   constant: constant" in text and "#   empty: empty" in text
    assert "#   target_copy: leaks the target" in text


@pytest.mark.slow
def test_inferred_recipe_trains_as_written(mixed_csv, tmp_path):
    out = tmp_path / "recipe.yaml"
    assert main_ok(["init", str(mixed_csv), "--target", "target", "-o", str(out), "--no-pretrained"])
    result = dlforge.train(out, out=tmp_path / "run", overrides=["training.epochs=2"], progress=False)
    assert set(dlforge.load(result.run_dir).signature["inputs"]) == {"amount", "color", "flag", "note", "photo", "signal"}


def test_train_with_target_is_init_plus_train(mixed_csv, tmp_path):
    assert main_ok(["train", str(mixed_csv), "--target", "target", "--out", str(tmp_path / "run"), "-q",
                    "--set", "training.epochs=1", "--no-pretrained"])
    assert (tmp_path / "run" / "model.safetensors").is_file()




def test_untypable_column_says_why_and_what_to_write():
    table = Table({"blob": np.array([{"a": 1}, {"b": 2}] * 5, dtype=object),
                   "y": np.array(["a", "b"] * 5, dtype=object)}, "t")
    with pytest.raises(DataError, match="cannot type") as err:
        infer_recipe(table, "t.csv", "y")
    assert "--drop blob" in err.value.hint and "type: text" in err.value.hint


def test_one_class_target_and_unknown_target(mixed_csv, capsys):
    with pytest.raises(SystemExit) as info:
        main(["init", str(mixed_csv), "--target", "constant"])
    assert info.value.code == 2 and "single class" in capsys.readouterr().err
    with pytest.raises(DataError, match="did you mean 'target'"):
        init(str(mixed_csv), "targte")


CSVS = [("adult", "income"), ("compas/compas.csv.gz", "two_year_recid"), ("german_credit/german_credit.csv", "credit_risk"),
        ("lending_club/lending_club.csv", "Class"), ("rt_snippets", "label"), ("spam_assassin", "label"),
        ("tuxpaint_photos/labels.csv", "label")]


@pytest.mark.slow
@needs_data("adult", "compas", "german_credit", "lending_club", "rt_snippets", "spam_assassin", "tuxpaint_photos")
@pytest.mark.parametrize("source,target", CSVS, ids=[c[0].split("/")[0] for c in CSVS])
def test_init_recipes_train_on_every_shared_csv(source, target, tmp_path):
    path = tmp_path / "r.yaml"
    init(str(DATA / source), target, out=path)
    recipe = yaml.safe_load(path.read_text())
    assert recipe["outputs"][0]["name"] == target
    # As written, only smaller: 1 epoch on 600 rows keeps the test in seconds.
    result = dlforge.train(path, out=tmp_path / "run", overrides=["training.epochs=1", "data.max_rows=600"],
                           progress=False)
    # A small table trains a cross-fit ensemble (init writes training.cross_fit): every member ran the one epoch.
    members = result.metrics.get("cross_fit", {}).get("members") or [result.metrics]
    assert {m["epochs_run"] for m in members} == {1} and "test" in result.metrics


@needs_data("imagenet_samples")
def test_init_refuses_a_target_with_one_row_per_class():
    with pytest.raises(DataError, match="most have a single row"):
        init(str(DATA / "imagenet_samples" / "labels.csv"), "label_name")


def test_a_table_of_one_or_two_rows_says_too_few_rows_not_single_class(tmp_path):
    for rows in ("1,a\n", "1,a\n2,b\n"):
        path = tmp_path / "few.csv"
        path.write_text("x,y\n" + rows)
        with pytest.raises(DataError, match=r"the data has \d row\(s\) with a value of 'y'; at least 10 are needed"):
            init(str(path), "y")


def test_codes_with_leading_zeros_are_typed_as_categories(tmp_path):
    path = tmp_path / "zips.csv"
    path.write_text("zip,y\n" + "".join(f"{z},{'ab'[i % 2]}\n" for i, z in enumerate(["02134", "2134", "10001"] * 8)))
    assert "{name: zip, type: category}" in init(str(path), "y")
