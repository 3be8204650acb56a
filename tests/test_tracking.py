"""MLflow tracking: a run's params, per-epoch metrics and files in a local SQLite store; off cleanly when turned off
or not installed; a locked or unwritable store costs one warning and training goes on; `dlforge runs` lists runs
from their directories and the store, and compares two."""

from __future__ import annotations

import json
import shutil
import sqlite3

import numpy as np
import pandas as pd
import pytest

import dlforge
from dlforge.training.callbacks import tracking

from conftest import main_ok

mlflow = pytest.importorskip("mlflow", reason="the `track` extra (mlflow-skinny) is not installed")


def recipe(csv, epochs=3, name="tracked") -> dict:
    return {"name": name, "data": {"source": str(csv), "split": {"val": 0.2, "test": 0.2, "seed": 0}},
            "inputs": [{"name": "x", "type": "number"}, {"name": "c", "type": "category"}],
            "outputs": [{"name": "y", "type": "binary"}],
            "training": {"epochs": epochs, "batch_size": 32, "baseline": False}}


@pytest.fixture(scope="module")
def csv(tmp_path_factory):
    rng = np.random.default_rng(0)
    x = rng.normal(size=200)
    path = tmp_path_factory.mktemp("track") / "d.csv"
    pd.DataFrame({"x": x, "c": rng.choice(["a", "b"], 200), "y": np.where(x > 0, "p", "n")}).to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def tracked(csv, tmp_path_factory):
    """One run logged to a new SQLite store (its schema migrations take seconds: done once per module)."""
    root = tmp_path_factory.mktemp("runs")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DLFORGE_TRACKING", "auto")
        result = dlforge.train(recipe(csv), out=root / "a", progress=False)
    return root, result


@pytest.mark.slow  # creating the SQLite store: seconds
def test_run_is_logged_with_params_epochs_and_files(tracked):
    root, result = tracked
    record = json.loads((result.run_dir / "tracking.json").read_text())
    assert record["uri"] == f"sqlite:///{root.resolve() / 'mlflow.db'}"
    client = mlflow.tracking.MlflowClient(tracking_uri=record["uri"])
    run = client.get_run(record["run_id"])
    assert run.info.status == "FINISHED" and run.info.run_name == "tracked"
    assert run.data.params["training.epochs"] == "3" and run.data.params["inputs.1.name"] == "c"
    assert run.data.tags["dlforge.run_dir"] == str(result.run_dir.resolve())
    losses = client.get_metric_history(record["run_id"], "val.loss")
    assert [m.step for m in losses] == [1, 2, 3]
    assert [m.value for m in losses] == pytest.approx([row["val.loss"] for row in result.history])
    assert run.data.metrics["final.test.accuracy"] == pytest.approx(result.metrics["test"]["accuracy"])
    files = {f.path for f in client.list_artifacts(record["run_id"])}
    assert {"model.json", "model.safetensors", "metrics.json", "report.html", "plots"} <= files
    assert "checkpoint" not in files
    assert (root / "mlartifacts").is_dir()  # beside the store, not ./mlruns


@pytest.mark.slow
def test_runs_lists_directories_and_store_only_runs(tracked, csv, capsys):
    root, result = tracked
    copy = root / "b"
    shutil.copytree(result.run_dir, copy)
    assert main_ok(["runs", "--dir", str(root)])
    out = capsys.readouterr().out
    assert "tracked" in out and "complete" in out and str(copy) in out
    shutil.rmtree(copy)
    moved = root.parent / "moved_a"
    shutil.move(str(result.run_dir), moved)  # the directory is gone: the store still knows the run
    try:
        assert main_ok(["runs", "--dir", str(root)])
        out = capsys.readouterr().out
        assert "store: finished" in out
    finally:
        shutil.move(str(moved), result.run_dir)


@pytest.mark.slow
def test_locked_store_warns_once_and_training_goes_on(tracked, csv, tmp_path, capsys, monkeypatch):
    root, _ = tracked
    lock = sqlite3.connect(root / "mlflow.db")
    lock.execute("BEGIN EXCLUSIVE")  # another process holds the store
    try:
        # A short SQLite busy timeout keeps the test quick; the default (5 s) behaves the same, later.
        monkeypatch.setenv("DLFORGE_TRACKING", f"sqlite:///{root / 'mlflow.db'}?timeout=0.2")
        result = dlforge.train(recipe(csv), out=tmp_path / "locked", progress=False)
    finally:
        lock.rollback()
        lock.close()
    err = capsys.readouterr().err
    assert err.count("MLflow tracking is off for this run") == 1 and "locked" in err
    assert "Traceback" not in err and "INFO mlflow" not in err
    assert (result.run_dir / "model.json").is_file() and result.metrics["epochs_run"] == 3


def test_unwritable_store_warns_once_and_training_goes_on(csv, tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("DLFORGE_TRACKING", f"sqlite:///{blocker / 'mlflow.db'}")
    result = dlforge.train(recipe(csv, epochs=2), out=tmp_path / "run", progress=False)
    err = capsys.readouterr().err
    assert err.count("MLflow tracking is off for this run") == 1 and str(blocker) in err
    assert (result.run_dir / "report.html").is_file() and not (result.run_dir / "tracking.json").exists()


def test_tracking_off_or_not_installed_leaves_no_store(csv, tmp_path, monkeypatch):
    monkeypatch.setenv("DLFORGE_TRACKING", "off")
    run = dlforge.train(recipe(csv, epochs=1), out=tmp_path / "runs" / "off", progress=False).run_dir
    assert not (tmp_path / "runs" / "mlflow.db").exists() and not (run / "tracking.json").exists()
    monkeypatch.setenv("DLFORGE_TRACKING", "auto")
    monkeypatch.setattr(tracking, "tracking_available", lambda: False)  # as without the `track` extra
    from dlforge.recipe.io import validate

    assert tracking.default_tracking(validate(recipe(csv)), tmp_path / "runs" / "x") == []
    monkeypatch.setattr(tracking, "tracking_available", lambda: True)
    assert len(tracking.default_tracking(validate(recipe(csv)), tmp_path / "runs" / "x")) == 1
    named = recipe(csv)
    named["training"]["callbacks"] = [{"name": "mlflow", "experiment": "mine"}]
    assert tracking.default_tracking(validate(named), tmp_path / "runs" / "x") == []  # the recipe's own, not two


def test_compare_two_runs_and_bad_arguments(csv, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DLFORGE_TRACKING", "off")
    a = dlforge.train(recipe(csv, epochs=1), out=tmp_path / "a", progress=False).run_dir
    b = dlforge.train(recipe(csv, epochs=2), out=tmp_path / "b", progress=False).run_dir
    from dlforge.workflows.runs import compare_runs

    result = compare_runs(a, b)
    assert ("training.epochs", "1", "2") in result["params"]
    epochs = next(m for m in result["metrics"] if m[0] == "epochs_run")
    assert epochs[1:] == (1.0, 2.0, 1.0)
    assert main_ok(["runs", "--compare", str(a), str(b)])
    out = capsys.readouterr().out
    assert "training.epochs" in out and "test.accuracy" in out
    for argv, message in ((["runs", "--compare", str(a)], "--compare takes two run directories"),
                          (["runs", "--compare", str(a), str(tmp_path / "nope")], "no such run directory"),
                          (["runs", "--dir", str(tmp_path / "nowhere")], "no such folder of runs")):
        assert not main_ok(argv)
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err
