"""Run tracking in MLflow: the resolved recipe as params, every epoch's metrics, the run directory as artifacts.

On by default when the `track` extra is installed (`pip install 'dlforge[track]'`: mlflow-skinny with SQLAlchemy
and alembic, no UI), off cleanly when not. The store is a local SQLite file beside the run directories
(`runs/mlflow.db`, artifacts under `runs/mlartifacts/`); `mlflow ui --backend-store-uri sqlite:///runs/mlflow.db`
reads it. `DLFORGE_TRACKING` chooses: unset or `auto` (that default), `off`, or a tracking URI.

Tracking never stops training: a store that is locked, unwritable or broken gives one warning and the run goes
on untracked. Costs: importing mlflow (~2 s), and creating a new SQLite store (its schema migrations: ~5-15 s,
once per store); then a few ms per epoch. Client calls (`MlflowClient`), not mlflow's global active run, so
several trainings in one process never mix. The MLflow run id is kept in `<run>/tracking.json`, so `--resume`
continues the same MLflow run.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import math
import os
import sys
import time
from pathlib import Path

from dlforge.core.files import write_json
from dlforge.training.callbacks.base import Callback, callbacks

ENV = "DLFORGE_TRACKING"
OFF = ("off", "0", "false", "no", "none")
EXPERIMENT = "dlforge"
TRACKING_JSON = "tracking.json"
PARAM_CHARS = 6000  # MLflow's limit on a param value
SKIPPED_ARTIFACTS = ("checkpoint",)  # the training state: large, and of no use to a reader of the run


def tracking_available() -> bool:
    """True when mlflow can be imported (found without importing it: that takes seconds)."""
    return importlib.util.find_spec("mlflow") is not None


def default_store(run_dir: Path) -> str:
    """The SQLite store beside the run directories: runs/mlflow.db for runs/<name>."""
    return "sqlite:///" + str(Path(run_dir).resolve().parent / "mlflow.db")


def store_from_env(run_dir: Path) -> str | None:
    """The tracking URI `DLFORGE_TRACKING` asks for: None for off, or when auto and mlflow is not installed."""
    setting = os.environ.get(ENV, "auto").strip()
    if setting.lower() in OFF:
        return None
    if setting.lower() in ("", "auto", "on"):
        return default_store(run_dir) if tracking_available() else None
    return setting


def flatten_params(value, prefix: str = "") -> dict[str, str]:
    """{"training.optimizer.lr": "0.002", "inputs.0.name": "age", ...} from the resolved recipe."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            out.update(flatten_params(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        out = {}
        for i, item in enumerate(value):
            out.update(flatten_params(item, f"{prefix}.{i}"))
        return out
    text = json.dumps(value) if isinstance(value, (list, bool)) or value is None else str(value)
    return {prefix: text[:PARAM_CHARS]}


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


@callbacks.register("mlflow")
class MlflowTracking(Callback):
    """Log this run to MLflow. `uri`: a tracking URI (default: the SQLite store beside the run directory);
    `experiment`: the MLflow experiment's name."""

    def __init__(self, *, uri: str | None = None, experiment: str = EXPERIMENT):
        self.uri = uri
        self.experiment = experiment
        self.client = None
        self.run_id: str | None = None
        self.disabled = False

    # -- failure handling: one warning, then off ------------------------------------------------------------
    def _safely(self, action, *args) -> None:
        if self.disabled:
            return
        try:
            with _quiet_mlflow():
                action(*args)
        except ImportError:
            self.disabled = True
            _warn("MLflow tracking is off for this run: mlflow is not installed; pip install 'dlforge[track]'")
        except Exception as exc:  # noqa: BLE001 - any store failure (locked, unwritable, corrupt) must not stop training
            self.disabled = True
            detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
            _warn(f"MLflow tracking is off for this run: the store {self.uri} failed ({exc.__class__.__name__}"
                  f"{': ' + detail if detail else ''}); training goes on. Fix the store or set {ENV}=off.")

    # -- hooks ------------------------------------------------------------------------------------------------
    def on_fit_start(self, trainer) -> None:
        self._safely(self._start, trainer)

    def on_epoch_end(self, trainer, epoch: int, metrics: dict[str, float]) -> bool:
        self._safely(self._log_metrics, metrics, epoch + 1)
        return False

    def on_run_end(self, trainer, run_dir) -> None:
        self._safely(self._finish, Path(run_dir))

    # -- the work ----------------------------------------------------------------------------------------------
    def _start(self, trainer) -> None:
        run_dir = Path(trainer.run_dir)
        self.uri = self.uri or default_store(run_dir)
        _prepare_sqlite_folder(self.uri)
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=self.uri)
        previous = _read_tracking_json(run_dir)
        if previous.get("uri") == self.uri and previous.get("run_id"):
            self.run_id = previous["run_id"]  # a resume: the same MLflow run goes on
            self.client.update_run(self.run_id, status="RUNNING")
            return
        experiment = self.client.get_experiment_by_name(self.experiment)
        if experiment is None:
            location = _artifact_location(self.uri)
            experiment_id = self.client.create_experiment(self.experiment, artifact_location=location)
        else:
            experiment_id = experiment.experiment_id
        from dlforge._version import __version__

        run = self.client.create_run(experiment_id, run_name=trainer.recipe.name,
                                     tags={"dlforge.run_dir": str(run_dir.resolve()), "dlforge.version": __version__})
        self.run_id = run.info.run_id
        write_json(run_dir / TRACKING_JSON, {"uri": self.uri, "experiment": self.experiment, "run_id": self.run_id})
        from mlflow.entities import Param

        params = [Param(k, v) for k, v in flatten_params(trainer.recipe.model_dump(mode="json")).items()]
        for start in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=params[start:start + 100])

    def _log_metrics(self, metrics: dict, step: int) -> None:
        if self.run_id is None:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        rows = [Metric(k, float(v), now, step) for k, v in metrics.items()
                if k != "epoch" and isinstance(v, (int, float)) and math.isfinite(v)]
        if rows:
            self.client.log_batch(self.run_id, metrics=rows)

    def _finish(self, run_dir: Path) -> None:
        if self.run_id is None:
            return
        final = {}
        path = run_dir / "metrics.json"
        if path.is_file():
            from dlforge.evaluation.metrics import flatten

            data = json.loads(path.read_text(encoding="utf-8"))
            for part in ("val", "test"):
                if isinstance(data.get(part), dict):
                    final.update({f"final.{k}": v for k, v in flatten(data[part], part).items()})
            for key in ("train_seconds", "epochs_run"):
                if isinstance(data.get(key), (int, float)):
                    final[key] = data[key]
            calibration = data.get("calibration") or {}
            if isinstance(calibration.get("ece"), (int, float)):
                final["calibration.ece"] = calibration["ece"]
        self._log_metrics(final, 0)
        for item in sorted(run_dir.iterdir()):
            if item.name in SKIPPED_ARTIFACTS:
                continue
            if item.is_dir():
                self.client.log_artifacts(self.run_id, str(item), artifact_path=item.name)
            else:
                self.client.log_artifact(self.run_id, str(item))
        self.client.set_terminated(self.run_id, status="FINISHED")


@contextlib.contextmanager
def _quiet_mlflow():
    """MLflow logs its own INFO lines (schema migrations) and whole SQL tracebacks on a locked store; the one
    warning above says what matters, so its loggers are silenced while we call it. mlflow sets its own logger's
    level when first imported, so it is imported first (an ImportError reaches `_safely`)."""
    import mlflow  # noqa: F401

    names = ["mlflow", "alembic", *(n for n in list(logging.root.manager.loggerDict)
                                   if n.startswith(("mlflow.", "alembic.")))]
    levels = {name: logging.getLogger(name).level for name in names}
    for name in names:
        logging.getLogger(name).setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def _prepare_sqlite_folder(uri: str) -> None:
    """SQLite creates the file but not its folder: make the folder (an unwritable one fails here, clearly)."""
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///"):].split("?")[0]).parent.mkdir(parents=True, exist_ok=True)


def _artifact_location(uri: str) -> str | None:
    """Artifacts of a SQLite store go beside it (runs/mlartifacts), not into ./mlruns of whatever the cwd is."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///"):].split("?")[0]).parent / "mlartifacts").resolve().as_uri()
    return None


def _read_tracking_json(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / TRACKING_JSON).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def default_tracking(recipe, run_dir: Path) -> list:
    """The tracking callback `dlforge.train` adds: none when DLFORGE_TRACKING is off, mlflow is absent, or the
    recipe's training.callbacks already has an `mlflow` entry."""
    named = [entry if isinstance(entry, str) else entry.name for entry in recipe.training.callbacks]
    if "mlflow" in named:
        return []
    uri = store_from_env(run_dir)
    return [MlflowTracking(uri=uri)] if uri else []


__all__ = ["ENV", "MlflowTracking", "default_store", "default_tracking", "flatten_params", "store_from_env",
           "tracking_available"]
