"""Serving fixtures: a tiny tabular run, apps over the session's trained runs, a live uvicorn server."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

import numpy as np
import pandas as pd
import pytest


@pytest.fixture(scope="session")
def tabular_run(tmp_path_factory):
    """Adult-like rows: numbers (one with NaN and a hyphenated name), a category, a binary input; binary target."""
    import dlforge

    rng = np.random.default_rng(0)
    n = 240
    age = rng.integers(18, 80, n).astype(float)
    hours = rng.normal(40, 10, n)
    work = rng.choice(["Private", "State-gov", "Self-emp"], n)
    sex = rng.choice(["Female", "Male"], n)
    score = (age - 45) / 15 + (hours - 40) / 10 + (work == "Self-emp") * 1.0
    frame = pd.DataFrame({"age": age, "hours-per-week": np.where(rng.random(n) < 0.05, np.nan, hours),
                          "workclass": work, "sex": sex, "income": np.where(score > 0, ">50K", "<=50K")})
    root = tmp_path_factory.mktemp("tabular")
    frame.to_csv(root / "people.csv", index=False)
    recipe = {
        "name": "tiny-income",
        "data": {"source": str(root / "people.csv"), "split": {"val": 0.15, "test": 0.15, "seed": 0}},
        "inputs": [{"name": "age", "type": "number"}, {"name": "hours-per-week", "type": "number"},
                   {"name": "workclass", "type": "category"}, {"name": "sex", "type": "binary"}],
        "outputs": [{"name": "income", "type": "binary"}],
        "combiner": {"name": "concat", "layers": [16]},
        "training": {"epochs": 3, "batch_size": 32, "optimizer": {"name": "adam", "lr": 0.01}},
    }
    out = root / "run"
    dlforge.train(recipe, out=out, progress=False)
    return out


@pytest.fixture(scope="session")
def digits_predictor(digits_run):
    import dlforge

    return dlforge.load(digits_run)


@pytest.fixture(scope="session")
def tabular_predictor(tabular_run):
    import dlforge

    return dlforge.load(tabular_run)


def wait_ready(client, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, "the app did not become ready"
        time.sleep(0.02)


@contextlib.contextmanager
def app_client(run_dir, predictor=None, **settings):
    """A TestClient over a fresh app (lifespan running), once the model is ready."""
    from fastapi.testclient import TestClient

    from dlforge.serve import ServeConfig, create_app

    app = create_app(ServeConfig(run_dir=str(run_dir), threads=1, **settings), predictor=predictor)
    with TestClient(app, raise_server_exceptions=False) as client:
        wait_ready(client)
        client.app_ref = app
        yield client


@pytest.fixture
def digits_client(digits_run, digits_predictor):
    with app_client(digits_run, digits_predictor) as client:
        yield client


@pytest.fixture
def tabular_client(tabular_run, tabular_predictor):
    with app_client(tabular_run, tabular_predictor) as client:
        yield client


class LiveUrl(str):
    """The live server's base URL; `.app` is the app it serves."""

    app = None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def live_server(run_dir, predictor=None, **settings):
    """A real uvicorn server on a free loopback port, in a thread; stopped (gracefully) on exit."""
    import httpx
    import uvicorn

    from dlforge.serve import ServeConfig, create_app
    from dlforge.serve.server import uvicorn_config

    port = free_port()
    config = ServeConfig(run_dir=str(run_dir), threads=1, port=port, **settings)
    app = create_app(config, predictor=predictor)
    # The server `dlforge serve` runs (its HTTP protocol and connection limits), logging through pytest's capture.
    server = uvicorn.Server(uvicorn_config(config, app, log_level="warning", lifespan="on", log_config=None))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = LiveUrl(f"http://127.0.0.1:{port}")
    url.app = app
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(url + "/readyz").status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def png_bytes(array: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array.astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()
