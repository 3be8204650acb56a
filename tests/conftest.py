"""Shared fixtures: tiny data, tiny recipes, one trained run per session. Tests take seconds each."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("DLFORGE_DATA", REPO.parent / "shared" / "data")).resolve()
os.environ.setdefault("DLFORGE_DATA", str(DATA))
os.environ.setdefault("MPLBACKEND", "Agg")
# MLflow tracking (on by default when the `track` extra is installed) is off in tests: a new SQLite store costs
# seconds of schema migrations. tests/test_tracking.py turns it on where it is the point.
os.environ.setdefault("DLFORGE_TRACKING", "off")


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str

    def __iter__(self):  # `code, out, err = cli(...)`
        return iter((self.returncode, self.stdout, self.stderr))


@pytest.fixture
def cli(capsys, monkeypatch):
    """`cli("train", recipe, ...)`: runs `dlforge train recipe ...` in this process; returns code and output.

    The same code path as the console script without a Python start and a torch import per call; a traceback on
    stderr fails the test (bad input must get one clear message).
    """
    from dlforge.cli import main

    def run(*args, cwd=None) -> CliResult:
        if cwd is not None:
            monkeypatch.chdir(cwd)
        capsys.readouterr()  # drop what earlier steps of the test printed
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
        out, err = capsys.readouterr()
        assert "Traceback" not in err, err
        return CliResult(code, out, err)

    return run


def needs_data(*names: str):
    missing = [n for n in names if not (DATA / n).exists()]
    return pytest.mark.skipif(bool(missing), reason=f"dataset(s) {missing} not under DLFORGE_DATA={DATA}")


@pytest.fixture(autouse=True)
def _quiet_threads():
    import torch

    torch.set_num_threads(2)
    yield


def digits_recipe(**training) -> dict:
    """The built-in digits data with a tiny CNN: trains in about a second."""
    return {
        "name": "tiny-digits",
        "data": {"source": "builtin:digits", "split": {"val": 0.1, "test": 0.2, "seed": 0}},
        "inputs": [{"name": "image", "type": "image",
                    "encoder": {"name": "cnn", "channels": [8], "padding": "same", "dense": [32]}}],
        "outputs": [{"name": "label", "type": "category"}],
        "training": {"epochs": 2, "batch_size": 64, "optimizer": {"name": "adam", "lr": 0.003}, **training},
    }


@pytest.fixture
def tiny_csv(tmp_path) -> Path:
    """200 rows: two numbers (one with NaN), a category, a binary, and a binary target that depends on them."""
    rng = np.random.default_rng(0)
    n = 200
    x1 = rng.normal(size=n)
    x2 = rng.normal(size=n)
    color = rng.choice(["red", "green", "blue"], size=n)
    flag = rng.choice(["yes", "no"], size=n)
    score = x1 + 0.5 * x2 + (color == "red") * 1.0 + (flag == "yes") * 0.5
    target = np.where(score > 0.5, "good", "bad")
    x2_with_nan = x2.copy()
    x2_with_nan[[3, 7, 11]] = np.nan
    frame = pd.DataFrame({"x1": x1, "x2": x2_with_nan, "color": color, "flag": flag, "target": target,
                          "amount": 3 * x1 + x2 + rng.normal(scale=0.1, size=n)})
    path = tmp_path / "tiny.csv"
    frame.to_csv(path, index=False)
    return path


def tabular_recipe(csv: Path, **overrides) -> dict:
    recipe = {
        "name": "tiny-tabular",
        "data": {"source": str(csv), "split": {"val": 0.15, "test": 0.15, "seed": 0}},
        "inputs": [{"name": "x1", "type": "number"}, {"name": "x2", "type": "number"},
                   {"name": "color", "type": "category"}, {"name": "flag", "type": "binary"}],
        "outputs": [{"name": "target", "type": "binary"}],
        "combiner": {"name": "concat", "layers": [16]},
        "training": {"epochs": 3, "batch_size": 32, "optimizer": {"name": "adam", "lr": 0.01}},
    }
    recipe.update(overrides)
    return recipe


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory) -> Path:
    """One trained digits run shared by read-only tests (artifact, predict, evaluate, serve)."""
    import dlforge

    out = tmp_path_factory.mktemp("runs") / "digits"
    dlforge.train(digits_recipe(epochs=3), out=out, progress=False)
    return out


class InterruptAt:
    """Requests a stop in the middle of an epoch, as the CLI's Ctrl-C handler does (the library owns no signals)."""

    def __init__(self, step: int, epoch: int = 0):
        self.step, self.epoch, self.current = step, epoch, None

    def on_epoch_start(self, trainer, epoch):
        self.current = epoch

    def on_step_end(self, trainer, step):
        if self.current == self.epoch and step == self.step:
            trainer.stop.set()


class StopAfterSteps:
    """Requests a stop after `steps` training steps of this run (counted across epochs), as Ctrl-C would."""

    def __init__(self, steps: int):
        self.steps, self.seen = steps, 0

    def on_step_end(self, trainer, step):
        self.seen += 1
        if self.seen == self.steps:
            trainer.stop.set()


def main_ok(argv) -> bool:
    """The CLI in-process: True when it exits 0 (or returns without exiting)."""
    from dlforge.cli import main

    try:
        main(argv)
    except SystemExit as exc:
        return exc.code in (0, None)
    return True


def without_module(monkeypatch, prefix: str) -> None:
    """Make `import <prefix>...` (and importlib.import_module of it) fail as if the package were not installed."""
    import builtins
    import importlib

    real_import, real_import_module = builtins.__import__, importlib.import_module

    def refuse(name, *args, **kwargs):
        if name.startswith(prefix):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", refuse)
    monkeypatch.setattr(importlib, "import_module",
                        lambda name, package=None: refuse(name) if name.startswith(prefix)
                        else real_import_module(name, package))
