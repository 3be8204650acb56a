"""`serve(config)`: check the configuration, then run uvicorn with one or more worker processes."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

from dlforge.artifact.format import read_model_json
from dlforge.serve.config import ServeConfig
from dlforge.serve.security import check_binding, load_api_keys


def app_from_env():
    """The app factory uvicorn calls in each worker process (the settings travel in the environment)."""
    from dlforge.serve.app import create_app

    return create_app(ServeConfig.from_env())


def serve(config: ServeConfig) -> None:
    """Serve `config.run_dir` until interrupted; refuses unsafe settings before binding anything."""
    import uvicorn

    read_model_json(config.run_dir)  # fail now, with exit code 2, on a missing or incomplete run directory
    keys = load_api_keys(config.api_key_file) if config.api_key_file else []
    check_binding(config.host, has_key=bool(keys), insecure=config.insecure)
    config.to_env()
    if config.workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Each worker counts in its own process; prometheus_client aggregates them through this folder.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder = tempfile.mkdtemp(prefix="dlforge-metrics-")
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
    uvicorn.run("dlforge.serve.server:app_from_env", factory=True, host=config.host, port=config.port,
                workers=config.workers, access_log=config.access_log, server_header=False,
                timeout_graceful_shutdown=config.drain_s, log_level="info",
                # A spawned worker imports torch before it can answer the supervisor's ping; on a busy
                # machine that takes longer than uvicorn's default 5 s, which would kill it in a loop.
                timeout_worker_healthcheck=120)
