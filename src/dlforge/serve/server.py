"""`serve(config)`: check the configuration, then run uvicorn with one or more worker processes.

A model that cannot be loaded stops the server: the app calls `fatal(error)`, which records the error
in a file the parent process reads back (`DLFORGE_SERVE_FATAL_FILE`), then stops the server (one
process) or asks the supervisor, its parent, to stop every worker (several processes). `serve` then raises the error, so `dlforge serve` exits with code 2 and one message: an
orchestrator sees a failed container instead of a live process that never becomes ready.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import tempfile

from dlforge.artifact.format import read_model_json
from dlforge.core.errors import DlforgeError
from dlforge.serve.config import ServeConfig
from dlforge.serve.security import ServeError, check_binding, load_api_keys

FATAL_ENV = "DLFORGE_SERVE_FATAL_FILE"
STARTUP_FAILURE = 3  # uvicorn's exit code for a worker that cannot start: its supervisor then stops them all
_server = None  # the uvicorn.Server of a one-process `serve` (None in worker processes)


def app_from_env():
    """The app factory uvicorn calls in each worker process (the settings travel in the environment)."""
    from dlforge.serve.app import create_app

    return create_app(ServeConfig.from_env(), on_fatal=fatal)


def fatal(error: DlforgeError) -> None:
    """The model cannot be loaded: record why for the parent process, and stop serving."""
    path = os.environ.get(FATAL_ENV)
    if path:
        with open(path, "w", encoding="utf-8") as handle:
            json.dump({"message": error.message, "where": error.where, "hint": error.hint}, handle)
    if _server is not None:  # one process: stop its server; serve() then raises the error
        _server.should_exit = True
    elif path:
        # A worker of serve()'s supervisor (our parent): SIGTERM makes it stop every worker gracefully. Exiting
        # here instead could leave the supervisor waiting for a health-check answer (up to 120 s).
        os.kill(os.getppid(), signal.SIGTERM)
    else:  # a worker under some other supervisor: uvicorn's stops every worker when one exits with this code
        os._exit(STARTUP_FAILURE)


def uvicorn_config(config: ServeConfig, app="dlforge.serve.server:app_from_env", **overrides):
    """The uvicorn configuration of `config`: our HTTP protocol with its connection limits, no websockets."""
    import uvicorn

    from dlforge.serve.protocol import ConnectionLimits, GuardedHttpToolsProtocol

    settings = dict(
        host=config.host, port=config.port, workers=config.workers, access_log=config.access_log,
        factory=isinstance(app, str), server_header=False, log_level="info", ws="none",
        http=GuardedHttpToolsProtocol, limit_concurrency=config.limit_concurrency,
        timeout_keep_alive=config.keep_alive_s, timeout_graceful_shutdown=config.drain_s,
        h11_max_incomplete_event_size=config.max_header_bytes,  # the same limit should anyone switch to h11
        # A spawned worker imports torch before it can answer the supervisor's ping; on a busy machine that
        # takes longer than uvicorn's default 5 s, which would kill it in a loop.
        timeout_worker_healthcheck=120)
    settings.update(overrides)
    result = uvicorn.Config(app, **settings)
    result.dlforge_limits = ConnectionLimits(header_timeout_s=config.header_timeout_s,
                                             body_timeout_s=config.body_timeout_s,
                                             max_header_bytes=config.max_header_bytes)
    return result


def serve(config: ServeConfig) -> None:
    """Serve `config.run_dir` until interrupted; refuses unsafe settings before binding anything."""
    global _server
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    from dlforge.serve.runtime import weights_version

    read_model_json(config.run_dir)  # fail now, with exit code 2, on a missing or incomplete run directory
    try:
        weights_version(config.run_dir)
    except OSError as exc:
        raise ServeError(f"cannot read the weights: {exc.strerror}", where=str(exc.filename)) from None
    keys = load_api_keys(config.api_key_file) if config.api_key_file else []
    check_binding(config.host, has_key=bool(keys), insecure=config.insecure)
    config.to_env()
    folder = tempfile.mkdtemp(prefix="dlforge-serve-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    os.environ[FATAL_ENV] = fatal_file = os.path.join(folder, "fatal.json")
    if config.workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Each worker counts in its own process; prometheus_client aggregates them through this folder.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_folder = tempfile.mkdtemp(prefix="dlforge-metrics-")
        atexit.register(shutil.rmtree, metrics_folder, ignore_errors=True)
    settings = uvicorn_config(config)
    if config.workers == 1:
        _server = uvicorn.Server(settings)
        try:
            _server.run()
        finally:
            _server = None
    else:
        Multiprocess(settings, sockets=[settings.bind_socket()]).run()
    if os.path.exists(fatal_file):
        with open(fatal_file, encoding="utf-8") as handle:
            error = json.load(handle)
        raise ServeError(error["message"], where=error["where"], hint=error["hint"])
