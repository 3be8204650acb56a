"""Issue #11 items 3, 6, 9: a damaged run directory is a clear ArtifactError, never a traceback or a silent load;
files are written with the mode a plain open() gives (0644 under umask 022), so a non-root reader can load them.
"""

from __future__ import annotations

import json
import os
import shutil
import stat

import numpy as np
import pytest

import dlforge
from dlforge.core.errors import ArtifactError
from dlforge.core.files import TEMP_SUFFIX, atomic_path, write_text


@pytest.fixture
def run(digits_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(digits_run, copy)
    return copy


def _meta(run):
    return json.loads((run / "model.json").read_text())


def _write_meta(run, meta):
    (run / "model.json").write_text(json.dumps(meta))


def _truncate(data):
    return data[: len(data) // 2]


def _flip_a_bit(data):
    data = bytearray(data)
    data[-7] ^= 0x10  # inside the last tensor's bytes: a valid safetensors file with one wrong weight
    return bytes(data)


DAMAGE = {
    "truncated": _truncate,
    "empty": lambda data: b"",
    "random": lambda data: np.random.default_rng(0).bytes(len(data)),
    "huge header": lambda data: (2**62).to_bytes(8, "little") + data[8:],
    "bit flip": _flip_a_bit,
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_weights_are_a_clear_error(run, damage):
    path = run / "model.safetensors"
    path.write_bytes(DAMAGE[damage](path.read_bytes()))
    with pytest.raises(ArtifactError) as info:
        dlforge.load(run)
    assert info.value.where == str(path) and "damaged" in info.value.render()


@pytest.mark.parametrize("damage", ["truncated", "empty", "random", "huge header"])
def test_damaged_weights_of_a_run_without_digest_are_still_a_clear_error(run, damage):
    meta = _meta(run)
    del meta["weights"], meta["content_sha256"]  # as saved before the digests existed
    _write_meta(run, meta)
    dlforge.load(run)  # loads without them
    path = run / "model.safetensors"
    path.write_bytes(DAMAGE[damage](path.read_bytes()))
    with pytest.raises(ArtifactError, match="model.safetensors"):
        dlforge.load(run)


def _drop(key):
    def edit(meta):
        del meta[key]
        return meta
    return edit


def _set(key, value):
    def edit(meta):
        meta[key] = value
        return meta
    return edit


def _labels(edit_labels):
    def edit(meta):
        state = meta["features"]["outputs"]["label"]
        key = next(k for k, v in state.items() if isinstance(v, list))
        state[key] = edit_labels(state[key])
        return meta
    return edit


MODEL_JSON_DAMAGE = {
    "no signature": (_drop("signature"), "signature: Field required"),
    "no features": (_drop("features"), "features: Field required"),
    "no recipe": (_drop("recipe"), "recipe: Field required"),
    "a JSON list": (lambda meta: [meta], "holds a JSON list, not an object"),
    "format_version -5": (_set("format_version", -5), "format_version: Input should be greater than or equal to 1"),
    "format_version 0": (_set("format_version", 0), "format_version: Input should be greater than or equal to 1"),
    "format_version true": (_set("format_version", True), "format_version: Input should be a valid integer"),
    "labels cut short": (_labels(lambda labels: labels[:-1]), "changed after it was saved"),
    "labels reversed": (_labels(lambda labels: labels[::-1]), "changed after it was saved"),
}


@pytest.mark.parametrize("damage", list(MODEL_JSON_DAMAGE))
def test_damaged_model_json_is_a_clear_error(run, damage):
    edit, message = MODEL_JSON_DAMAGE[damage]
    (run / "model.json").write_text(json.dumps(edit(_meta(run))))
    with pytest.raises(ArtifactError, match=message):
        dlforge.load(run)


def test_labels_cut_short_without_a_digest_disagree_with_the_head(run):
    """Bound to the weights even without content_sha256: label count = head size, via the signature."""
    meta = _labels(lambda labels: labels[:-1])(_meta(run))
    del meta["content_sha256"]
    _write_meta(run, meta)
    with pytest.raises(ArtifactError, match="output 'label' gives the signature"):
        dlforge.load(run)


def test_model_json_records_the_weights_digest(digits_run):
    import hashlib

    meta = _meta(digits_run)
    data = (digits_run / "model.safetensors").read_bytes()
    assert meta["weights"] == {"file": "model.safetensors", "bytes": len(data),
                               "sha256": hashlib.sha256(data).hexdigest()}


def test_run_files_are_readable_by_others(digits_run):
    """0644 under umask 022: model.safetensors was 0600, unreadable to the Docker image's non-root user."""
    files = [p for p in digits_run.rglob("*") if p.is_file()]
    assert {"model.safetensors", "model.json", "state.pt", "metrics.json", "report.html"} <= {p.name for p in files}
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path


def test_the_atomic_writer_respects_the_umask_and_leaves_no_temp(tmp_path):
    old = os.umask(0o077)
    try:
        write_text(tmp_path / "private.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "private.txt").stat().st_mode) == 0o600
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "never.bin") as tmp:
        assert tmp.name.startswith(".never.bin.") and tmp.name.endswith(TEMP_SUFFIX)
        tmp.write_bytes(b"half")
        raise RuntimeError("the writer failed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["private.txt"]
