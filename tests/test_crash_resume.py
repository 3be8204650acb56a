"""Crash safety, the quick version of benchmarks/crash_resume.py (issue #11): a real `dlforge train` process is
killed inside a checkpoint write, inside the final weights write, and stopped by SIGTERM in the post-training
phase; each resume must give the uninterrupted run's files bit for bit, and leave no temp file.

The long version (`python benchmarks/crash_resume.py --trials 20`, random kill points) is in docs/reliability.md.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

import dlforge

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "crash_resume.py"


@pytest.fixture(scope="module")
def crash(tmp_path_factory):
    spec = importlib.util.spec_from_file_location("crash_resume", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    work = tmp_path_factory.mktemp("crash")
    recipe = module.make_recipe(work, module.make_data(work))
    dlforge.train(str(recipe), out=work / "reference", progress=False)
    return module, recipe, module.fingerprint(work / "reference")


@pytest.mark.slow  # three `dlforge train` subprocesses (torch import each)
@pytest.mark.parametrize("signal_name,at,code", [
    ("KILL", "state.pt#2", -9),          # inside the second checkpoint write (at the first: nothing to resume)
    ("KILL", "model.safetensors", -9),   # inside the final weights write (a 71.6 MB temp file was once left)
    ("TERM", "metrics.json", 130),       # a SIGTERM in the post-training phase: a message, not rc -15
])
def test_a_killed_run_resumes_bit_identical(crash, tmp_path, signal_name, at, code):
    module, recipe, reference = crash
    out = tmp_path / "run"
    rc, text = module.dlforge(["train", str(recipe), "--out", str(out)], kill_at_name=at, signal_name=signal_name)
    assert rc == code, text
    if signal_name == "TERM":
        assert "interrupted:" in text and f"dlforge train --resume {out}" in text
    dlforge.train(resume=out, progress=False)
    assert module.leftovers(out) == []
    assert module.fingerprint(out) == reference
