"""Reading tables as written (#11.5, #12.5): no value merged, nothing made missing that the user did not say,
duplicate headers refused, the split column announced, hostile files refused before they are opened."""

import gzip
import os

import numpy as np
import pytest

from dlforge import DataError, load_recipe
from dlforge.data import load_table, prepare
from dlforge.data.readers import ReadOptions


def write(tmp_path, text: str, name="t.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def recipe_for(csv, inputs, output, **data):
    return load_recipe({"name": "t", "data": {"source": str(csv), "split": {"val": 0.0, "test": 0.0}, **data},
                        "inputs": inputs, "outputs": [output], "training": {"epochs": 1}})


def test_codes_with_leading_zeros_stay_distinct_categories(tmp_path):
    csv = write(tmp_path, "zip,y\n02134,a\n2134,b\n002134,a\n02134,b\n")
    prepared = prepare(recipe_for(csv, [{"name": "zip", "type": "category"}], {"name": "y", "type": "category"}))
    assert sorted(prepared.inputs["zip"].vocabulary_[1:]) == ["002134", "02134", "2134"]


@pytest.mark.parametrize("labels", [["1", "1.0", "0"], ["True", "true", "false"], [" pos", "pos", "neg"]])
def test_label_values_are_never_merged(tmp_path, labels):
    rows = "".join(f"{i},{labels[i % 3]}\n" for i in range(12))
    csv = write(tmp_path, "x,y\n" + rows)
    prepared = prepare(recipe_for(csv, [{"name": "x", "type": "number"}], {"name": "y", "type": "category"}))
    assert sorted(prepared.outputs["y"].labels_) == sorted(labels)
    # ... and the two that look alike are reported, so the user can merge them in the file if they are one class
    assert prepared.report["policies"]["y"] == {"labels_kept_apart_that_differ_only_in_case_spaces_or_number_format": 2}


def test_only_empty_cells_are_missing_by_default(tmp_path):
    csv = write(tmp_path, "c,y\nNA,a\nNone,b\nnull,a\nn/a,b\n,a\nNA,b\n")
    table = load_table(str(csv))
    assert table.columns["c"][:4].tolist() == ["NA", "None", "null", "n/a"]
    assert table.columns["c"][4] != table.columns["c"][4]  # the empty cell: NaN
    prepared = prepare(recipe_for(csv, [{"name": "c", "type": "category"}], {"name": "y", "type": "category"}))
    assert sorted(prepared.inputs["c"].vocabulary_[1:]) == ["NA", "None", "n/a", "null"]
    assert prepared.report["policies"]["c"] == {"unknown_or_missing": 1}


def test_na_values_and_keep_default_na_come_from_the_recipe(tmp_path):
    csv = write(tmp_path, "c,n,y\nNA,1,a\n?,?,b\nnull,3,a\nx,4,b\n")
    listed = prepare(recipe_for(csv, [{"name": "c", "type": "category"}, {"name": "n", "type": "number"}],
                                {"name": "y", "type": "category"}, na_values=["?"]))
    assert sorted(listed.inputs["c"].vocabulary_[1:]) == ["NA", "null", "x"]
    assert listed.report["policies"]["n"] == {"filled_missing": 1}
    defaults = load_table(str(csv), options=ReadOptions(keep_default_na=True))
    assert [v != v for v in defaults.columns["c"]] == [True, False, True, False]
    with pytest.raises(DataError, match=r"column 'n' has non-numeric values \['\?'\]"):
        prepare(recipe_for(csv, [{"name": "n", "type": "number"}], {"name": "y", "type": "category"}))


def test_duplicate_header_names_are_an_error(tmp_path):
    csv = write(tmp_path, "a,b,a\n1,2,3\n4,5,6\n")
    with pytest.raises(DataError, match=r"the header names a column more than once: 'a' in columns \[1, 3\]"):
        load_table(str(csv))


def test_a_first_row_longer_than_the_header_is_an_error_not_a_silent_index(tmp_path):
    # pandas would turn the unquoted text's extra fields into an index and keep only the last piece
    csv = write(tmp_path, "text,label\na gorgeous, witty, seductive movie.,fresh\na dull mess,rotten\n")
    with pytest.raises(DataError, match=r"line 2 has more fields than the header's 2") as error:
        load_table(str(csv))
    assert "quote text that holds commas" in error.value.hint
    gz = tmp_path / "t.csv.gz"
    gz.write_bytes(gzip.compress(b"text\nnot, quoted\nok\n"))
    with pytest.raises(DataError, match=r"line 2 has more fields than the header's 1"):
        load_table(str(gz))
    quoted = write(tmp_path, 'text,label\n"a gorgeous, witty, seductive movie.",fresh\n', name="q.csv")
    assert load_table(str(quoted)).columns["text"].tolist() == ["a gorgeous, witty, seductive movie."]


def test_split_column_is_announced_and_explained(tmp_path):
    csv = write(tmp_path, "x,y,split\n" + "".join(f"{i},{'ab'[i % 2]},{'train' if i < 8 else 'test'}\n"
                                                for i in range(10)))
    table = load_table(str(csv))
    assert table.notes == ["column 'split' is read as the data's own split (train 8, test 2), not as data; "
                           "rename it in the file to use it as a column"]
    prepared = prepare(recipe_for(csv, [{"name": "x", "type": "number"}], {"name": "y", "type": "category"}))
    assert prepared.report["notes"] == table.notes
    with pytest.raises(DataError, match="is the data's train/val/test split marker"):
        prepare(recipe_for(csv, [{"name": "split", "type": "category"}], {"name": "y", "type": "category"}))


def test_non_utf8_error_names_the_byte_of_the_file(tmp_path):
    head = "x,y\n" + "".join(f"{i},label-{i}\n" for i in range(30000))  # far past pandas' first buffer
    path = tmp_path / "t.csv"
    path.write_bytes(head.encode() + b"1,caf\xe9\n")
    with pytest.raises(DataError, match=rf"not UTF-8 text \(byte {len(head.encode()) + 5}, line 30002"):
        load_table(str(path))
    gz = tmp_path / "t.csv.gz"
    gz.write_bytes(gzip.compress(head.encode() + b"1,caf\xe9\n"))
    with pytest.raises(DataError, match=rf"byte {len(head.encode()) + 5}, line 30002"):
        load_table(str(gz))


def test_fifo_device_and_binary_sources_are_refused_at_once(tmp_path):
    fifo = tmp_path / "pipe.csv"
    os.mkfifo(fifo)
    with pytest.raises(DataError, match="is not a regular file"):
        load_table(str(fifo))
    with pytest.raises(DataError, match="is not a regular file"):
        load_table("/dev/zero", fmt="csv")
    sparse = tmp_path / "sparse.csv"
    with open(sparse, "wb") as handle:
        handle.truncate(20 * 2**30)  # 20 GB of holes
    with pytest.raises(DataError, match="GB, more than this machine's memory|holds NUL bytes"):
        load_table(str(sparse))
    small = tmp_path / "nul.csv"
    small.write_bytes(b"a,b\n" + b"\x00" * 100)
    with pytest.raises(DataError, match=r"holds NUL bytes \(byte 4\)"):
        load_table(str(small))


def test_npz_of_objects_is_a_data_error(tmp_path):
    path = tmp_path / "o.npz"
    np.savez(path, a=np.array([{"x": 1}], dtype=object))
    with pytest.raises(DataError, match="cannot read npz"):
        load_table(str(path))


def test_recipe_check_prints_the_split_column_note(tmp_path, capsys):
    from dlforge.cli import main

    csv = write(tmp_path, "x,y,split\n" + "".join(f"{i},{'ab'[i % 2]},{'train' if i < 16 else 'test'}\n"
                                                for i in range(20)))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"name: t\ndata: {{source: {csv}}}\ninputs: [{{name: x, type: number}}]\n"
                      "outputs: [{name: y, type: category}]\n")
    main(["recipe", "check", str(recipe)])
    assert "note: column 'split' is read as the data's own split (train 16, test 4)" in capsys.readouterr().out


def test_predict_reads_cells_as_training_did(tmp_path):
    import dlforge

    rows = "".join(f"{'?' if i % 5 == 0 else i},{'ab'[i % 2]}\n" for i in range(40))
    csv = write(tmp_path, "x,y\n" + rows)
    recipe = {"name": "t", "data": {"source": str(csv), "na_values": ["?"]},
              "inputs": [{"name": "x", "type": "number"}], "outputs": [{"name": "y", "type": "category"}],
              "training": {"epochs": 1}}
    dlforge.train(recipe, out=tmp_path / "run", progress=False)
    predictor = dlforge.load(tmp_path / "run")
    from dlforge.cli import main

    main(["predict", str(tmp_path / "run"), "--data", str(csv), "--output", str(tmp_path / "p.csv")])
    assert len((tmp_path / "p.csv").read_text().splitlines()) == 41
    assert predictor.recipe.data.na_values == ["?"]
