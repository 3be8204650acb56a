"""A quick scikit-learn baseline beside every tabular run: does deep learning pay on this table?

Gradient-boosted trees (HistGradientBoosting, default settings, native categorical columns) and a linear
model (logistic or ridge regression on one-hot categories) are fitted on the run's own training rows,
encoded exactly as the network sees them (same split, same vocabularies, same target encoding), and
scored on the run's test split (or validation split) with the run's own metric functions, so the
numbers stand side by side. It costs seconds on tables of tens of thousands of rows.

scikit-learn is an extra (`pip install 'dlforge[tabular]'`): without it the baseline is skipped with
one notice saying how to get it, never an error.
"""

from __future__ import annotations

import math
import time
import warnings

import numpy as np
import torch

from dlforge.evaluation.metrics import metric_sets

PIP_LINE = "pip install 'dlforge[tabular]'"
TABLE_TYPES = ("number", "binary", "category")
MAX_NATIVE_CATEGORIES = 250  # HistGradientBoosting's native categories need codes below max_bins (255)
MAX_ONE_HOT = 100  # the linear model one-hot encodes a category's most frequent codes; the rest share a column


def sklearn_missing() -> str | None:
    """None when scikit-learn imports, else the one-line notice saying how to get the baseline."""
    try:
        import sklearn  # noqa: F401
    except ImportError:
        return f"baseline skipped: scikit-learn is not installed; for the baseline run: {PIP_LINE}"
    return None


def applies(signature: dict) -> bool:
    """The baseline is for table-only runs with one number/binary/category output."""
    inputs, outputs = signature["inputs"], signature["outputs"]
    return (bool(inputs) and all(s["type"] in TABLE_TYPES for s in inputs.values()) and len(outputs) == 1
            and next(iter(outputs.values()))["type"] in TABLE_TYPES)


def _design(x: dict[str, torch.Tensor], signature: dict) -> tuple[np.ndarray, list[int], list[int]]:
    """One float matrix: number/binary columns as they are, categories as their vocabulary codes.

    Returns the matrix, the indices of its category columns and their cardinalities."""
    columns, categorical, cardinality, width = [], [], [], 0
    for name, sig in signature["inputs"].items():
        values = x[name].cpu().numpy()
        block = values.reshape(len(values), -1).astype(np.float64)
        if sig["type"] == "category":
            categorical.append(width)
            cardinality.append(int(sig["cardinality"]))
        columns.append(block)
        width += block.shape[1]
    return np.concatenate(columns, axis=1), categorical, cardinality


def _one_hot(matrix: np.ndarray, categorical: list[int], cardinality: list[int], means, stds) -> np.ndarray:
    """Numbers standardised (train statistics), categories one-hot over their first MAX_ONE_HOT codes."""
    numeric = [j for j in range(matrix.shape[1]) if j not in categorical]
    parts = [(matrix[:, numeric] - means) / stds]
    for j, n in zip(categorical, cardinality):
        codes = np.minimum(matrix[:, j].astype(np.int64), MAX_ONE_HOT)
        parts.append(np.eye(min(n, MAX_ONE_HOT + 1))[np.minimum(codes, min(n, MAX_ONE_HOT + 1) - 1)])
    return np.concatenate(parts, axis=1)


def _models(kind: str, categorical: list[int], cardinality: list[int], seed: int):
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
    from sklearn.linear_model import LogisticRegression, Ridge

    # Categories with too many values for native splits go in as their (frequency-ordered) codes.
    native = [j for j, n in zip(categorical, cardinality) if n <= MAX_NATIVE_CATEGORIES]
    trees = (HistGradientBoostingRegressor if kind == "number" else HistGradientBoostingClassifier)(
        categorical_features=native or None, random_state=seed)
    linear = Ridge() if kind == "number" else LogisticRegression(max_iter=1000)
    return {"hist_gradient_boosting": (trees, False),
            ("ridge" if kind == "number" else "logistic_regression"): (linear, True)}


def _logits(model, matrix: np.ndarray, kind: str) -> torch.Tensor:
    """Predictions as the logits the run's metric functions read (so the metrics are computed identically)."""
    if kind == "number":
        return torch.from_numpy(model.predict(matrix)).float().unsqueeze(1)
    proba = np.clip(model.predict_proba(matrix), 1e-7, 1 - 1e-7)
    if kind == "binary":
        return torch.from_numpy(np.log(proba[:, 1] / proba[:, 0])).float().unsqueeze(1)
    return torch.from_numpy(np.log(proba)).float()


def fit_baseline(splits: dict, signature: dict, *, seed: int = 0, units=None, threads: int | None = None,
                 timed: bool = False) -> dict:
    """{"split": scored split, model name: {metrics..., "fit_seconds": s}} for a table-only run.

    `splits` are the run's encoded splits (`Prepared.splits`); `units` maps encoded number targets back to the
    user's units (as training reports them); `threads` caps scikit-learn's OpenMP/BLAS threads as
    `training.threads` caps torch's (on a busy machine, idle-spinning threads make a fit many times slower).
    `timed` adds each fit's CPU seconds (`fit_cpu_seconds`, for benchmarks). Assumes `applies(signature)` and
    scikit-learn installed."""
    from threadpoolctl import threadpool_limits  # a dependency of scikit-learn

    with threadpool_limits(limits=threads):
        return _fit(splits, signature, seed=seed, units=units, timed=timed)


def _fit(splits: dict, signature: dict, *, seed: int, units, timed: bool) -> dict:
    (target, out_sig), = signature["outputs"].items()
    kind = out_sig["type"]
    if "test" not in splits and "val" not in splits:
        return {"skipped": "no test or validation rows to score the baseline on (data.split.val and test are 0)"}
    part = "test" if "test" in splits else "val"
    train, scored = splits["train"], splits[part]
    x_train, categorical, cardinality = _design(train.x, signature)
    x_eval, _, _ = _design(scored.x, signature)
    y_train = train.y[target].cpu().numpy()
    y_train = y_train.astype(np.int64) if kind != "number" else y_train.astype(np.float64)
    numeric = [j for j in range(x_train.shape[1]) if j not in categorical]
    means, stds = x_train[:, numeric].mean(0), x_train[:, numeric].std(0)
    stds[stds == 0] = 1.0
    result: dict = {"split": part}
    for name, (model, linear) in _models(kind, categorical, cardinality, seed).items():
        fit_x = _one_hot(x_train, categorical, cardinality, means, stds) if linear else x_train
        eval_x = _one_hot(x_eval, categorical, cardinality, means, stds) if linear else x_eval
        started, cpu = time.perf_counter(), time.process_time()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # lbfgs convergence notes on unscaled one-hots: the score says enough
            model.fit(fit_x, y_train)
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
        logits = _logits(model, eval_x, kind)
        kwargs = {"scale": units[target]} if kind == "number" and units and target in units else {}
        metrics = metric_sets.get(kind)(logits, scored.y[target], out_sig, **kwargs)
        result[name] = {k: v for k, v in metrics.items() if not (isinstance(v, float) and math.isnan(v))}
        result[name]["fit_seconds"] = round(seconds, 3)
        if timed:
            result[name]["fit_cpu_seconds"] = round(cpu, 3)
    return result


_NOTICED: set[str] = set()


def baseline_for(setting, splits: dict, signature: dict, *, seed: int = 0, units=None, threads: int | None = None,
                 say=None) -> dict | None:
    """The `baseline` block of metrics.json for a run, or None when it does not apply or is off.

    `setting` is `training.baseline` (auto/true/false). Without scikit-learn the block records why it was
    skipped, and `say` (e.g. print to stderr) hears the pip line once per process."""
    if setting is False or (setting == "auto" and not applies(signature)):
        return None
    if not applies(signature):
        return {"skipped": "the baseline needs number/category/binary inputs and one such output"}
    notice = sklearn_missing()
    if notice:
        if say is not None and notice not in _NOTICED:
            _NOTICED.add(notice)
            say(notice)
        return {"skipped": notice}
    return fit_baseline(splits, signature, seed=seed, units=units, threads=threads)


def compare_line(model_metrics: dict, baseline: dict) -> str:
    """One line: the run's headline metric beside each baseline model's (for the terminal summary)."""
    key = next((k for k in ("accuracy", "rmse", "micro_f1", "hr@10") if k in model_metrics), None)
    extra = "roc_auc" if "roc_auc" in model_metrics else ("r2" if "r2" in model_metrics else
                                                          ("ndcg@10" if "ndcg@10" in model_metrics else None))
    parts = []
    for name, values in baseline.items():
        if not isinstance(values, dict) or key is None or key not in values:
            continue
        text = f"{name} {key} {values[key]:.4f}"
        if extra and extra in values:
            text += f", {extra} {values[extra]:.4f}"
        parts.append(text + f" ({values['fit_seconds']:.1f} s)")
    if not parts:
        return ""
    return f"baseline on {baseline.get('split', 'test')}: " + "; ".join(parts)
