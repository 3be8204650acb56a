"""The CLI: exit code 2 with one clear message for bad input, never a traceback; `--help` without torch.

Commands run in-process (`dlforge.cli.main([...])`, output through capsys): the same code path as the console
script without a Python start and a torch import per call. A subprocess is kept only where the process is the
point: Ctrl-C (a real SIGINT to a real process) and what `dlforge --help` imports.
"""

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from conftest import digits_recipe, tabular_recipe


def write_recipe(tmp_path, recipe, name="r.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.mark.slow
def test_train_evaluate_predict_round_trip(cli, tmp_path, digits_run):
    trained = cli("train", write_recipe(tmp_path, digits_recipe(epochs=1)), "--out", tmp_path / "run", "-q",
                  "--set", "training.epochs=2")
    assert trained.returncode == 0, trained.stderr
    assert "test: accuracy" in trained.stdout and f"run directory: {tmp_path / 'run'}" in trained.stdout
    assert "epochs_run" not in trained.stdout and "trained 2 epoch(s)" in trained.stdout
    evaluated = cli("evaluate", tmp_path / "run")
    assert evaluated.returncode == 0 and evaluated.stdout.startswith("accuracy ")
    png = tmp_path / "digit.png"
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(png)
    predicted = cli("predict", tmp_path / "run", png, "--proba")
    assert predicted.returncode == 0, predicted.stderr
    frame = pd.read_csv(__import__("io").StringIO(predicted.stdout))
    assert list(frame.columns[:2]) == ["file", "predicted_label"] and "p_label_9" in frame.columns


def test_predict_table_to_csv(cli, tmp_path, tiny_csv):
    assert cli("train", write_recipe(tmp_path, tabular_recipe(tiny_csv)), "--out", tmp_path / "run", "-q").returncode == 0
    result = cli("predict", tmp_path / "run", "--data", tiny_csv, "--output", tmp_path / "preds.csv")
    assert result.returncode == 0, result.stderr
    preds = pd.read_csv(tmp_path / "preds.csv")
    assert len(preds) == 200 and set(preds["predicted_target"]) <= {"good", "bad"}


@pytest.mark.parametrize("args, message", [
    (["train", "missing.yaml"], "no such recipe file"),
    (["train", "--resume", "nowhere"], "no such run directory"),
    (["evaluate", "nowhere"], "no such run directory"),
    (["predict", "nowhere", "x.png"], "no such run directory"),
    (["recipe", "check", "--set", "training.optimizer.name=adma", "--no-data"], "did you mean 'adam'"),
])
def test_bad_input_exits_2_with_one_clear_message(cli, tmp_path, args, message):
    result = cli(*args, cwd=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr
    assert result.stderr.startswith("error: ")


@pytest.mark.parametrize("args", [["train", "--bogus"], ["predict"], []])
def test_usage_errors_exit_2(cli, args):
    """Unknown options and missing arguments (click's errors, vendored as typer._click in typer >= 0.22)."""
    result = cli(*args)
    assert result.returncode == 2
    assert "Usage" in result.stdout + result.stderr


def test_help_and_schema_do_not_import_torch(tmp_path):
    """`dlforge --help` and `recipe schema` answer in well under a second because they never import torch (~3 s)."""
    code = ("import contextlib, io, sys\n"
            "from dlforge.cli import main\n"
            "for args in (['--help'], ['recipe', 'schema'], ['train', '--help']):\n"
            "    with contextlib.redirect_stdout(io.StringIO()):\n"
            "        try:\n"
            "            main(args)\n"
            "        except SystemExit as exc:\n"
            "            assert exc.code in (0, None), (args, exc.code)\n"
            "print(sorted(m for m in ('torch', 'pandas', 'matplotlib') if m in sys.modules))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_data_errors_exit_2(cli, tmp_path, tiny_csv):
    recipe = tabular_recipe(tiny_csv, inputs=[{"name": "colour", "type": "category"}])
    result = cli("train", write_recipe(tmp_path, recipe), "--out", tmp_path / "run")
    assert result.returncode == 2 and "did you mean 'color'" in result.stderr


def test_predict_wrong_input_exits_2(cli, tmp_path, digits_run):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    result = cli("predict", digits_run, bad)
    assert result.returncode == 2 and "cannot decode image" in result.stderr


def test_recipe_check_prints_plan_without_training(cli, tmp_path):
    result = cli("recipe", "check", write_recipe(tmp_path, digits_recipe()))
    assert result.returncode == 0, result.stderr
    assert "parameters:" in result.stdout and "steps: 21 per epoch, 42 at most" in result.stdout
    assert not (tmp_path / "runs").exists()


def test_recipe_schema_is_json(cli):
    result = cli("recipe", "schema")
    assert json.loads(result.stdout)["title"] == "Recipe"


def test_docs_reference_is_generated_from_the_schema():
    from pathlib import Path

    from dlforge.recipe.reference import render_markdown

    docs = Path(__file__).resolve().parents[1] / "docs" / "recipe.md"
    assert docs.read_text() == render_markdown(), "regenerate with: make docs"


def test_predict_csv_of_image_paths_relative_to_the_csv(cli, tmp_path, digits_run):
    fixtures = __import__("pathlib").Path(__file__).parent / "fixtures"
    result = cli("predict", digits_run, "--data", fixtures / "digits_rows.csv", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0] == "image,predicted_label" and len(lines) == 4


@pytest.mark.slow
def test_ctrl_c_checkpoints_exits_130_and_resumes(tmp_path):
    import signal
    import time

    recipe = write_recipe(tmp_path, digits_recipe(epochs=400))
    proc = subprocess.Popen([sys.executable, "-m", "dlforge.cli", "train", str(recipe), "--out", str(tmp_path / "run"),
                             "-q"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    state = tmp_path / "run" / "checkpoint" / "state.pt"
    deadline = time.time() + 120
    while not state.exists() and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert f"dlforge train --resume {tmp_path / 'run'}" in stderr and "Traceback" not in stderr
