"""A library call leaves the caller's world as it found it: global RNGs, the caller's objects, the temp folder.

And a damaged checkpoint on resume is a clear ArtifactError (exit 2 from the CLI), not a traceback.
"""

from __future__ import annotations

import random
import tempfile

import numpy as np
import pytest
import torch

import dlforge
from conftest import digits_recipe, tabular_recipe
from dlforge.core.errors import ArtifactError
from dlforge.recipe.io import dump_recipe, load_recipe


def test_load_keeps_the_callers_global_rngs(digits_run):
    torch.manual_seed(123)
    np.random.seed(123)
    random.seed(123)
    states = torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()
    predictor = dlforge.load(digits_run)
    predictor.predict(np.zeros((2, 8, 8), dtype=np.float32))
    assert torch.equal(torch.get_rng_state(), states[0])
    assert np.array_equal(np.random.get_state()[1], states[1])
    assert random.getstate() == states[2]


def test_load_recipe_returns_a_deep_copy():
    original = load_recipe(digits_recipe())
    before = dump_recipe(original)
    copy = load_recipe(original)
    assert copy is not original and copy.training is not original.training and copy.inputs[0] is not original.inputs[0]
    copy.training.epochs = 99
    copy.inputs[0].encoder.channels.append(4)
    assert dump_recipe(original) == before
    overridden = load_recipe(original, ["training.epochs=7"])
    assert overridden.training.epochs == 7 and original.training.epochs == 2


def test_load_recipe_keeps_the_base_dir_of_a_yaml_recipe(tmp_path):
    import yaml

    (tmp_path / "r.yaml").write_text(yaml.safe_dump(digits_recipe()))
    recipe = load_recipe(tmp_path / "r.yaml")
    assert load_recipe(recipe)._base_dir == load_recipe(recipe, ["training.epochs=1"])._base_dir == str(tmp_path)


def test_load_recipe_never_changes_the_callers_dict():
    data = digits_recipe()
    snapshot = repr(data)
    load_recipe(data, ["training.optimizer.lr=0.5", "inputs.0.encoder.channels=[4]"])
    assert repr(data) == snapshot


def test_lr_auto_leaves_the_callers_recipe_alone(tmp_path):
    recipe = load_recipe(digits_recipe(epochs=1))
    recipe.training.optimizer.lr = "auto"
    run = dlforge.train(recipe, out=tmp_path / "run", progress=False)
    assert recipe.training.optimizer.lr == "auto"
    assert isinstance(run.metrics["lr_find"]["suggestion"], float)


def test_cross_validate_leaves_recipe_and_temp_folder_alone(tiny_csv, tmp_path, monkeypatch):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # every tempfile.* folder lands here
    recipe = load_recipe(tabular_recipe(tiny_csv, training={"epochs": 1, "batch_size": 32}))
    before = dump_recipe(recipe)
    result = dlforge.cross_validate(recipe, folds=2)
    assert len(result.folds) == 2
    assert dump_recipe(recipe) == before and recipe.data.split.test == 0.15
    assert list(scratch.iterdir()) == []


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A one-epoch digits run whose checkpoint each test copies and damages."""
    return dlforge.train(digits_recipe(epochs=1), out=tmp_path_factory.mktemp("resume") / "run", progress=False).run_dir


@pytest.mark.parametrize("damage", ["truncated", "garbage", "foreign"])
def test_damaged_checkpoint_on_resume_is_an_artifact_error(finished_run, tmp_path, damage, capsys):
    import shutil

    from dlforge.cli import main

    run_dir = shutil.copytree(finished_run, tmp_path / "run")
    (run_dir / "metrics.json").unlink()  # unfinished: a complete run resumes to nothing, without reading its checkpoint
    state = run_dir / "checkpoint" / "state.pt"
    if damage == "truncated":
        state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
    elif damage == "garbage":
        state.write_bytes(b"not a checkpoint at all" * 100)
    else:  # readable by torch, but not a trainer state
        torch.save({"weights": torch.zeros(3)}, state)
    with pytest.raises(ArtifactError) as info:
        dlforge.train(resume=run_dir, progress=False)
    assert info.value.where == str(state)
    expected = "not a dlforge training state" if damage == "foreign" else "checkpoint cannot be read"
    assert expected in info.value.message and "start the run again" in info.value.hint
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--resume", str(run_dir)])
    assert exit_info.value.code == 2
    assert expected in capsys.readouterr().err
