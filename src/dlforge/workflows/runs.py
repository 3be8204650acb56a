"""`dlforge report` and `dlforge runs`: rebuild a run's report.html; list and compare runs.

Runs are found as directories (a folder holding recipe.yaml, metrics.json or checkpoint/meta.json) under a root
(`runs/` by default), and, when the `track` extra is installed and a store exists (`runs/mlflow.db`), in the MLflow
store as well: a tracked run whose directory is gone still lists, from the store. Comparing two runs puts their
recipes' differing fields and their metrics side by side.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from dlforge.core.errors import ArtifactError
from dlforge.evaluation.metrics import flatten
from dlforge.report import write_report
from dlforge.training.callbacks.tracking import EXPERIMENT, flatten_params, tracking_available

COLUMNS = ("accuracy", "roc_auc", "macro_f1", "rmse", "r2")


def is_run_dir(path: Path) -> bool:
    return path.is_dir() and any((path / name).is_file() for name in
                                 ("recipe.yaml", "metrics.json", "model.json", "checkpoint/meta.json"))


def _check_run(run_dir: Path, where: str) -> Path:
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise ArtifactError("no such run directory", where=str(run_dir), hint="train one with `dlforge train RECIPE`; "
                            "`dlforge runs` lists the runs under runs/")
    if not is_run_dir(run_dir):
        raise ArtifactError(f"{run_dir} is not a dlforge run directory (no recipe.yaml, metrics.json or checkpoint)",
                            where=where, hint="point to a folder that `dlforge train` wrote, e.g. runs/<name>")
    return run_dir


def report(run_dir: str | Path) -> Path:
    """Rebuild <run_dir>/report.html from the files the run directory holds (any run, even an interrupted one)."""
    return write_report(_check_run(Path(run_dir), "RUN"))


def _read(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _status(run_dir: Path, metrics: dict) -> str:
    meta = _read(run_dir / "checkpoint" / "meta.json")
    if metrics and (meta.get("complete") or not (run_dir / "checkpoint").exists()):
        return "complete"
    return "interrupted" if (run_dir / "checkpoint").exists() else "incomplete"


def run_summary(run_dir: Path) -> dict:
    """One row of `dlforge runs`: name, status, epochs, seconds, the headline test (else val) metrics, ECE."""
    metrics = _read(run_dir / "metrics.json")
    part = "test" if isinstance(metrics.get("test"), dict) else "val"
    values = metrics.get(part) or {}
    recipe_name = None
    recipe = run_dir / "recipe.yaml"
    if recipe.is_file():
        import yaml

        try:
            recipe_name = (yaml.safe_load(recipe.read_text(encoding="utf-8")) or {}).get("name")
        except Exception:  # noqa: BLE001 - a damaged recipe.yaml: list the run by its folder name
            recipe_name = None
    row = {"run": str(run_dir), "name": recipe_name or run_dir.name, "status": _status(run_dir, metrics),
           "epochs": metrics.get("epochs_run"), "train_seconds": metrics.get("train_seconds"), "split": part,
           "modified": time.strftime("%Y-%m-%d %H:%M", time.localtime(run_dir.stat().st_mtime)),
           "tracked": _read(run_dir / "tracking.json").get("run_id")}
    row.update({k: values.get(k) for k in COLUMNS})
    row["ece"] = (metrics.get("calibration") or {}).get("ece")
    return row


def _store_rows(store: str, known: set[str]) -> list[dict]:
    """Runs the MLflow store holds whose directories are not among `known` (deleted or elsewhere)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=store)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is None:
        return []
    rows = []
    for run in client.search_runs([experiment.experiment_id], max_results=1000):
        path = run.data.tags.get("dlforge.run_dir", "")
        if path in known:
            continue
        m = run.data.metrics
        row = {"run": path or run.info.run_id, "name": run.info.run_name, "status": f"store: {run.info.status.lower()}",
               "epochs": m.get("epochs_run"), "train_seconds": m.get("train_seconds"), "split": "test",
               "modified": time.strftime("%Y-%m-%d %H:%M", time.localtime(run.info.start_time / 1000)),
               "tracked": run.info.run_id}
        row.update({k: m.get(f"final.test.{k}", m.get(f"final.val.{k}")) for k in COLUMNS})
        row["ece"] = m.get("calibration.ece")
        rows.append(row)
    return rows


def list_runs(root: str | Path = "runs", *, store: str | None = None) -> list[dict]:
    """Every run directory under `root` (one level, and the root itself if it is a run), newest first, then the
    MLflow store's runs that have no directory there. `store`: a tracking URI; default `root`/mlflow.db if it exists."""
    root = Path(root)
    if not root.is_dir():
        raise ArtifactError("no such folder of runs", where=str(root),
                            hint="train a run first (`dlforge train RECIPE` writes runs/<name>), or pass --dir")
    dirs = [root] if is_run_dir(root) else sorted((p for p in root.iterdir() if is_run_dir(p)),
                                                   key=lambda p: p.stat().st_mtime, reverse=True)
    rows = [run_summary(p) for p in dirs]
    if store is None and (root / "mlflow.db").is_file() and tracking_available():
        store = "sqlite:///" + str((root / "mlflow.db").resolve())
    if store:
        if not tracking_available():
            raise ArtifactError("--store needs MLflow, which is not installed", where="--store",
                                hint="pip install 'dlforge[track]'")
        try:
            rows += _store_rows(store, {str(p.resolve()) for p in dirs})
        except Exception as exc:  # noqa: BLE001 - a broken store must not hide the run directories
            rows.append({"run": store, "name": "(store unreadable)", "status": f"{exc.__class__.__name__}"})
    return rows


def _recipe_params(run_dir: Path) -> dict[str, str]:
    path = run_dir / "recipe.yaml"
    if not path.is_file():
        return {}
    import yaml

    try:
        return flatten_params(yaml.safe_load(path.read_text(encoding="utf-8")) or {})
    except Exception:  # noqa: BLE001
        return {}


def _metric_values(run_dir: Path) -> dict[str, float]:
    metrics = _read(run_dir / "metrics.json")
    values = {}
    for part in ("val", "test"):
        if isinstance(metrics.get(part), dict):
            values.update(flatten(metrics[part], part))
    for key in ("train_seconds", "epochs_run", "parameters"):
        if isinstance(metrics.get(key), (int, float)):
            values[key] = float(metrics[key])
    calibration = metrics.get("calibration") or {}
    if "ece" in calibration:
        values["calibration.ece"] = calibration["ece"]
        if "after" in calibration:
            values["calibration.ece_after"] = calibration["after"]["ece"]
    fairness = metrics.get("fairness") or {}
    for when in ("before", "after"):
        for grouping, block in (fairness.get(when) or {}).items():
            for key, value in (block.get("disparities") or {}).items():
                if isinstance(value, (int, float)):
                    values[f"fairness.{when}.{grouping}.{key}"] = value
    return values


def compare_runs(a: str | Path, b: str | Path) -> dict:
    """{"runs": [a, b], "params": [(field, a, b)] where the recipes differ, "metrics": [(name, a, b, b - a)]}."""
    first, second = _check_run(Path(a), "--compare"), _check_run(Path(b), "--compare")
    pa, pb = _recipe_params(first), _recipe_params(second)
    params = [(k, pa.get(k), pb.get(k)) for k in sorted(set(pa) | set(pb)) if pa.get(k) != pb.get(k)]
    ma, mb = _metric_values(first), _metric_values(second)
    metrics = [(k, ma.get(k), mb.get(k), (mb[k] - ma[k]) if k in ma and k in mb else None)
               for k in list(dict.fromkeys([*ma, *mb]))]
    return {"runs": [str(first), str(second)], "params": params, "metrics": metrics}


__all__ = ["compare_runs", "is_run_dir", "list_runs", "report", "run_summary"]
