"""A model that cannot be loaded stops the server with its message: exit code 2, one message, no traceback.

Before, `serve` stayed up forever with /readyz 503 "failed" and /healthz 200 on a truncated
model.safetensors, so an orchestrator never restarted it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest

from .conftest import free_port


@pytest.fixture
def damaged_run(digits_run, tmp_path):
    """A copy of the digits run whose weights were cut short (an interrupted copy or download)."""
    run = tmp_path / "damaged"
    shutil.copytree(digits_run, run, ignore=shutil.ignore_patterns("checkpoint", "plots"))
    weights = run / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 3])
    return run


def test_health_fails_and_on_fatal_is_called_when_the_model_cannot_load(damaged_run):
    from fastapi.testclient import TestClient

    from dlforge.core.errors import DlforgeError
    from dlforge.serve import ServeConfig, create_app

    errors = []
    app = create_app(ServeConfig(run_dir=str(damaged_run), threads=1), on_fatal=errors.append)
    with TestClient(app) as client:
        deadline = time.monotonic() + 30
        while not errors:
            assert time.monotonic() < deadline, "loading never failed"
            time.sleep(0.02)
        health = client.get("/healthz")
        assert health.status_code == 503 and health.json()["status"] == "failed"
        assert "cannot be loaded" in health.json()["detail"] and "\n" not in health.json()["detail"]
        assert client.get("/readyz").json()["status"] == "failed"
    # where: the run directory, or a file in it when the loader names one (ArtifactError)
    assert isinstance(errors[0], DlforgeError) and str(damaged_run) in errors[0].where


def test_serve_stops_and_raises_the_load_error(damaged_run, monkeypatch):
    from dlforge.serve import ServeConfig, serve
    from dlforge.serve.security import ServeError
    from dlforge.serve.server import FATAL_ENV

    for name in ("DLFORGE_SERVE_CONFIG", FATAL_ENV):  # serve() sets these; restore them afterwards
        monkeypatch.setenv(name, "")
    started = time.monotonic()
    with pytest.raises(ServeError, match="the model cannot be loaded") as caught:
        serve(ServeConfig(run_dir=str(damaged_run), port=free_port(), threads=1))
    assert str(damaged_run) in caught.value.where and time.monotonic() - started < 30


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_dlforge_serve_exits_2_with_one_message(damaged_run, workers):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "dlforge.cli", "serve", str(damaged_run), "--port", str(free_port()),
               "--workers", str(workers), "--threads", "1"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=180, env=env)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr + done.stdout
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "the model cannot be loaded" in errors[0] and str(damaged_run) in errors[0]


def test_a_dlforge_load_error_keeps_its_where_and_hint(tmp_path):
    from dlforge.core.errors import ArtifactError
    from dlforge.serve.app import load_error

    error = load_error(ArtifactError("weights are truncated", where=str(tmp_path / "model.safetensors"),
                                     hint="copy the run again"), tmp_path)
    assert error.render() == (f"{tmp_path / 'model.safetensors'}: the model cannot be loaded: weights are truncated"
                              "\n  hint: copy the run again")
    assert load_error(ArtifactError("no weights"), tmp_path).where == str(tmp_path)
    plain = load_error(RuntimeError("bad header\nmore detail"), tmp_path)
    assert plain.where == str(tmp_path) and plain.message == "the model cannot be loaded: RuntimeError: bad header"
