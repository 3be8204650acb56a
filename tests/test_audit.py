"""dlforge audit: each finding is detected on data where it was planted and absent on clean data; planted recall;
audit.html/audit.json; the cheap checks in `dlforge train`; bad input exits 2 with a message."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import main_ok, tabular_recipe

pytest.importorskip("sklearn")
pytest.importorskip("cleanlab")

N = 300


def clean_frame(seed: int = 0) -> pd.DataFrame:
    """A learnable binary target from two numbers and a category; a split column; no planted problem."""
    rng = np.random.default_rng(seed)
    x1, x2 = rng.normal(size=N), rng.normal(size=N)
    colour = rng.choice(["red", "green", "blue"], size=N)
    score = 2 * x1 + x2 + (colour == "red") * 1.0
    return pd.DataFrame({"x1": x1.round(6), "x2": x2.round(6), "colour": colour,
                         "note": [f"sample {i} of the run" for i in range(N)],
                         "y": np.where(score > 0.3, "good", "bad"),
                         "split": np.where(np.arange(N) % 5 == 0, "test", "train")})


def planted_frame() -> tuple[pd.DataFrame, dict]:
    """The clean frame with one of each problem planted; returns the frame and where each problem is."""
    frame = clean_frame()
    frame["const"] = "same"
    frame["row_id"] = np.arange(N)
    frame.loc[[5, 9], "x2"] = np.nan  # missing values
    frame.loc[17, "x1"] = 1e6  # an outlier
    margin = (2 * frame["x1"] + frame["x2"] + (frame["colour"] == "red") - 0.3).abs()
    flips = frame.index[(margin > 1.0) & (frame.index > 20)][::12][:8].tolist()  # clear errors: far from the boundary
    frame["y"] = frame["y"].astype(object)
    for r in flips:
        frame.loc[r, "y"] = "bad" if frame.loc[r, "y"] == "good" else "good"
    train_rows = frame.index[frame["split"] == "train"][:4].tolist()
    copies = frame.loc[train_rows].copy()
    copies["split"] = "test"
    copies["colour"] = copies["colour"].str.upper()  # a near twin: same row up to case
    copies["row_id"] = range(N, N + len(copies))
    single = frame.loc[[30]].copy()
    single[["y", "x1", "row_id"]] = ["rare", 0.25, N + 10]
    frame = pd.concat([frame, copies, single], ignore_index=True)
    frame["leak"] = frame["y"].map({"good": "G", "bad": "B", "rare": "R"})  # a relabelling of the target
    return frame, {"flips": flips, "copies": list(range(N, N + len(copies))), "outlier": 17}


@pytest.fixture(scope="module")
def audits(tmp_path_factory):
    """The audit of the clean and of the planted data (each about a second): shared by the finding tests."""
    import dlforge

    folder = tmp_path_factory.mktemp("audit")
    clean_csv, planted_csv = folder / "clean.csv", folder / "planted.csv"
    clean_frame().to_csv(clean_csv, index=False)
    frame, where = planted_frame()
    frame.to_csv(planted_csv, index=False)
    clean = dlforge.audit(str(clean_csv), target="y", out=folder / "clean", plant=True)
    planted = dlforge.audit(str(planted_csv), target="y", out=folder / "planted", plant=True)
    return clean.findings, planted.findings, where, folder


def test_leaky_constant_and_id_columns_found_only_where_planted(audits):
    clean, planted, _, _ = audits
    assert [c["column"] for c in planted["leaky_columns"]] == ["leak"]
    assert planted["leaky_columns"][0]["score"] >= 0.98
    assert [c["column"] for c in planted["constant_columns"]] == ["const"]
    assert [c["column"] for c in planted["id_like_columns"]] == ["row_id"]
    assert clean["leaky_columns"] == clean["constant_columns"] == clean["id_like_columns"] == []


def test_balance_missing_and_single_row_classes(audits):
    clean, planted, _, _ = audits
    assert clean["class_balance"] == clean_frame()["y"].value_counts().to_dict()
    assert planted["single_row_classes"] == ["rare"] and clean["single_row_classes"] == []
    assert planted["columns"]["x2"]["missing"] == 2 and clean["columns"]["x2"]["missing"] == 0
    assert clean["rows"] == N and clean["splits"]["test"] == N // 5


def test_duplicates_within_and_across_splits(audits):
    clean, planted, where, _ = audits
    assert clean["duplicates"]["exact"]["groups"] == clean["duplicates"]["near"]["groups"] == 0
    assert clean["duplicates"]["cross_split"]["rows"] == 0
    # the copies differ in case (and row_id, an ID column), so they are near twins, not exact ones
    cross = planted["duplicates"]["cross_split"]
    assert sorted(cross["leaked_rows"]) == where["copies"]
    assert planted["duplicates"]["exact"]["groups"] == 0


def test_outliers_found_in_the_planted_column(audits):
    clean, planted, where, _ = audits
    assert where["outlier"] in planted["outliers"]["columns"]["x1"]["examples"]
    assert clean["outliers"]["columns"]["x1"]["rows"] == 0
    assert planted["outliers"]["isolation_forest"]["most_anomalous"][0]["row"] == where["outlier"]


def test_label_errors_by_confident_learning(audits):
    clean, planted, where, _ = audits
    found = {e["row"] for e in planted["label_errors"]["examples"]}
    assert len(found & set(where["flips"])) >= 7, found  # nearly all of the 8 planted
    assert planted["label_errors"]["count"] <= 20
    assert clean["label_errors"]["count"] <= 5  # a learnable, noiseless target: few if any
    assert "leaky columns left out" in planted["label_errors"]["note"]


def test_planted_recall_and_precision_are_measured(audits):
    clean, _, _, _ = audits
    p = clean["planted"]
    dups, flips = p["cross_split_duplicates"], p["flipped_labels"]
    assert dups["planted"] == 5 and dups["found"] == 5 and dups["recall"] == 1.0 and dups["precision"] == 1.0
    assert flips["planted"] == 6 and 0 <= flips["found"] <= 6
    assert flips["recall"] == round(flips["found"] / 6, 4) and 0.0 <= flips["precision"] <= 1.0


def test_json_and_html_hold_the_findings(audits):
    _, planted, _, folder = audits
    saved = json.loads((folder / "planted" / "audit.json").read_text())
    assert saved["leaky_columns"][0]["column"] == "leak"
    assert any("leaky column 'leak'" in line for line in saved["summary"])
    page = (folder / "planted" / "audit.html").read_text()
    for section in ("summary", "balance", "columns", "leaks", "duplicates", "outliers", "labels", "planted"):
        assert f"id='{section}'" in page
    assert "<svg" in page and "leak" in page and "http" not in page.replace("http://www.w3.org/2000/svg", "")


def _write_images(folder: Path, rng) -> None:
    from PIL import Image

    for split, count in (("train", 10), ("test", 4)):
        for label in ("a", "b"):
            (folder / split / label).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = rng.integers(0, 255, size=(8, 8, 3), dtype=np.uint8)
                if label == "a":
                    pixels[:, :4] = 255
                Image.fromarray(pixels).resize((48, 48), Image.Resampling.NEAREST).save(
                    folder / split / label / f"{label}{i}.png")


def test_image_near_duplicates_across_splits_by_perceptual_hash(tmp_path):
    from PIL import Image

    import dlforge

    _write_images(tmp_path / "photos", np.random.default_rng(0))
    clean = dlforge.audit(str(tmp_path / "photos"), target="label", plant=False).findings
    assert clean["duplicates"]["near"]["groups"] == 0 and clean["duplicates"]["cross_split"]["rows"] == 0
    source = tmp_path / "photos" / "train" / "a" / "a0.png"
    with Image.open(source) as img:  # a resized, re-encoded copy in the test split
        img.convert("RGB").resize((40, 40), Image.Resampling.BILINEAR).save(tmp_path / "photos/test/a/copy.jpg",
                                                                             quality=80)
    found = dlforge.audit(str(tmp_path / "photos"), target="label", plant=False).findings
    assert found["duplicates"]["exact"]["groups"] == 0
    assert found["duplicates"]["cross_split"]["rows"] == 1
    assert "perceptual" in found["duplicates"]["near_method"]


def test_text_duplicates_are_normalised():
    from dlforge.audit import duplicates as dup

    text = np.array(["A great film!", "a  great film", "a different film", None], dtype=object)
    prints = dup.fingerprints({"t": text}, {"t": "text"})
    assert prints.near[0] == prints.near[1] != prints.near[2]
    assert prints.exact[0] != prints.exact[1]


def test_cli_writes_the_report_and_prints_the_findings(audits, tmp_path, capsys):
    _, _, _, folder = audits
    assert main_ok(["audit", str(folder / "planted.csv"), "--target", "y", "--out", str(tmp_path / "a"), "--no-plant"])
    printed = capsys.readouterr().out
    assert "leaky column 'leak'" in printed and "audit.html" in printed
    assert (tmp_path / "a" / "audit.html").is_file() and (tmp_path / "a" / "audit.json").is_file()


def test_python_api_is_callable_after_a_submodule_import():
    import dlforge
    import dlforge.audit.quick  # noqa: F401  (binds dlforge.audit to the package)

    assert callable(dlforge.audit)


@pytest.mark.parametrize("case", ["empty", "single_class", "no_such_target", "no_target"])
def test_bad_input_exits_2_with_a_message(tmp_path, capsys, case):
    csv = tmp_path / "d.csv"
    frame = clean_frame().drop(columns="split")
    if case == "empty":
        frame.iloc[:0].to_csv(csv, index=False)
    elif case == "single_class":
        frame.assign(y="good").to_csv(csv, index=False)
    else:
        frame.to_csv(csv, index=False)
    argv = ["audit", str(csv), "--out", str(tmp_path / "out")] + ([] if case == "no_target" else
                                                                  ["--target", "yy" if case == "no_such_target" else "y"])
    with pytest.raises(SystemExit) as exc:
        from dlforge.cli import main

        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    expected = {"empty": "no rows", "single_class": "single class ('good')",
                "no_such_target": "did you mean 'y'", "no_target": "x1, x2, colour, note, y"}[case]
    assert expected in err, err
    assert not (tmp_path / "out" / "audit.json").exists()


def test_train_prints_the_cheap_checks(tmp_path, capsys):
    import dlforge

    frame = clean_frame().drop(columns="split")
    frame["leak"] = np.where(frame["y"] == "good", "G", "B")
    frame = pd.concat([frame, frame.iloc[:30]], ignore_index=True)  # twins that the random split spreads
    csv = tmp_path / "d.csv"
    frame.to_csv(csv, index=False)
    recipe = tabular_recipe(csv, inputs=[{"name": "x1", "type": "number"}, {"name": "colour", "type": "category"},
                                         {"name": "leak", "type": "category"}],
                            outputs=[{"name": "y", "type": "binary"}])
    recipe["training"]["epochs"] = 1
    recipe["training"]["baseline"] = False
    result = dlforge.train(recipe, out=tmp_path / "run")
    err = capsys.readouterr().err
    assert "audit: column 'leak' alone predicts the target" in err
    assert "have a twin in another split" in err
    assert result.metrics["audit"]["cross_split_duplicates"] > 0
    assert [c["column"] for c in result.metrics["audit"]["leaky_columns"]] == ["leak"]


def test_a_recipe_is_audited_on_its_inputs_and_split(tiny_csv):
    import dlforge

    recipe = tabular_recipe(tiny_csv, inputs=[{"name": "x1", "type": "number"}, {"name": "color", "type": "category"}])
    found = dlforge.audit(recipe, plant=False).findings
    assert found["target"] == "target" and set(found["columns"]) == {"x1", "color", "target"}
    assert found["split_source"] == "the recipe's data.split"
    from dlforge.data import read_table
    from dlforge.recipe.io import load_recipe
    from dlforge.workflows.evaluate import derive_split

    loaded = load_recipe(recipe)
    rows = derive_split(loaded, read_table(loaded))  # the split `train` and `evaluate` use
    assert found["splits"] == {part: len(r) for part, r in rows.items()} == {"train": 144, "val": 26, "test": 30}


def test_cheap_checks_compare_image_files_by_content(tmp_path):
    import shutil

    from dlforge.audit.quick import quick_checks
    from dlforge.data.readers import load_table

    _write_images(tmp_path / "photos", np.random.default_rng(1))
    shutil.copy(tmp_path / "photos/train/b/b3.png", tmp_path / "photos/test/b/renamed.png")
    table = load_table(str(tmp_path / "photos"))
    splits = {part: np.flatnonzero(table.split == part) for part in ("train", "test")}
    found = quick_checks(table, inputs=["image"], target="label", target_type="category", splits=splits)
    renamed = int(np.flatnonzero([p.endswith("renamed.png") for p in table.columns["image"]])[0])
    assert found["cross_split_duplicates"] == 1 and renamed in found["leaked_rows"]
