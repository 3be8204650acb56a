"""Fairness by group: per-group metrics (fairlearn MetricFrame), disparities, and group thresholds fitted by
fairlearn's ThresholdOptimizer, exported as plain JSON.

Per group: rows, accuracy, selection rate (share predicted positive), true and false positive rates, and the
calibration error (ECE) of that group's probabilities. Disparities (binary outputs): demographic-parity and
equalised-odds differences (max - min over groups; 0 is parity) and ratios (min / max; 1 is parity), from
fairlearn's own functions. Every sensitive column is scored on its own and, with several, their combination.

Mitigation (Hardt et al. 2016, fairlearn.postprocessing.ThresholdOptimizer) is fitted on the validation split's
positive probabilities; its thresholds are copied out as JSON (`thresholds_record`) and applied by
`evaluation/postprocess.py` without fairlearn, so predicting and serving never import it, and nothing is pickled.
fairlearn is imported inside the functions (the `fairness` extra).
"""

from __future__ import annotations

import math

import numpy as np

from dlforge.core.errors import DlforgeError, RecipeError
from dlforge.data.features.base import as_strings
from dlforge.evaluation.calibration import ece

MISSING = "(missing)"
JOIN = " × "  # the label of a combination of groups, e.g. "Female × Black"


def _fairlearn():
    try:
        import fairlearn.metrics as metrics
        import fairlearn.postprocessing as postprocessing
    except ImportError:
        raise DlforgeError("evaluation.sensitive needs fairlearn, which is not installed", where="evaluation",
                           hint="pip install 'dlforge[fairness]'") from None
    return metrics, postprocessing


def check_sensitive_columns(recipe, columns) -> None:
    """Every evaluation.sensitive column is in the data: a RecipeError naming the missing ones and those that exist."""
    columns = list(columns)
    missing = [c for c in recipe.evaluation.sensitive if c not in columns]
    if missing:
        from dlforge.core.errors import did_you_mean

        raise RecipeError([f"evaluation.sensitive: column '{c}' is not in the data{did_you_mean(c, columns)}"
                           for c in missing], hint=f"columns that exist: {', '.join(columns)}")


def group_labels(values) -> np.ndarray:
    """A column's cells as group names (strings; missing cells are one group, '(missing)')."""
    strings = as_strings(np.asarray(values, dtype=object))
    return np.array([MISSING if s is None else s for s in strings], dtype=object)


def groupings(columns: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """{grouping name: group label per row}: each column alone, and their combination when there are several."""
    labels = {name: group_labels(values) for name, values in columns.items()}
    if len(labels) > 1:
        labels[JOIN.join(labels)] = combine(list(labels.values()))
    return labels


def combine(columns: list[np.ndarray]) -> np.ndarray:
    """Row-wise combination of group labels: 'Female × Black'."""
    return np.array([JOIN.join(parts) for parts in zip(*columns)], dtype=object)


def _finite(value) -> float | None:
    value = float(value)
    return round(value, 6) if math.isfinite(value) else None


def group_metrics(y_true: np.ndarray, y_pred: np.ndarray, probs: np.ndarray, groups: np.ndarray, *,
                  binary: bool, bins: int = 15, min_rows: int = 0) -> dict:
    """Per-group metrics and disparities for one grouping.

    y_true/y_pred: class indices (binary: 0/1); probs: (n, classes). Returns {"groups": {label: {...}},
    "overall": {...}, "disparities": {...}} (disparities for binary outputs only, over the groups of at least
    `min_rows` rows; the others are named in "small_groups").
    """
    fm, _ = _fairlearn()
    from sklearn.metrics import accuracy_score

    metrics = {"count": fm.count, "accuracy": accuracy_score}
    if binary:
        metrics.update({"selection_rate": fm.selection_rate, "tpr": fm.true_positive_rate,
                        "fpr": fm.false_positive_rate})
    frame = fm.MetricFrame(metrics=metrics, y_true=y_true, y_pred=y_pred, sensitive_features=groups)
    by_group = {str(label): {k: _finite(v) for k, v in row.items()} for label, row in frame.by_group.iterrows()}
    import torch

    p, t = torch.as_tensor(np.asarray(probs, dtype=np.float32)), torch.as_tensor(np.asarray(y_true))
    for label, row in by_group.items():
        mask = torch.as_tensor(groups == label)
        row["count"] = int(row["count"])
        row["ece"] = round(ece(p[mask], t[mask], bins), 6)
    overall = {k: _finite(v) for k, v in frame.overall.items()}
    overall["count"] = int(overall["count"])
    overall["ece"] = round(ece(p, t, bins), 6)
    out = {"groups": by_group, "overall": overall}
    if binary:
        small = sorted(label for label, row in by_group.items() if row["count"] < min_rows)
        keep = ~np.isin(groups, small)
        out["small_groups"] = small
        if len(set(groups[keep].tolist())) < 2:
            out["disparities"] = {"skipped": f"fewer than two groups of at least {min_rows} rows"}
            return out
        t, p, kw = y_true[keep], y_pred[keep], {"sensitive_features": groups[keep]}
        out["disparities"] = {
            "demographic_parity_difference": _finite(fm.demographic_parity_difference(t, p, **kw)),
            "demographic_parity_ratio": _finite(fm.demographic_parity_ratio(t, p, **kw)),
            "equalized_odds_difference": _finite(fm.equalized_odds_difference(t, p, **kw)),
            "equalized_odds_ratio": _finite(fm.equalized_odds_ratio(t, p, **kw)),
        }
    return out


def fairness_report(y_true, y_pred, probs, columns: dict[str, np.ndarray], *, binary: bool, bins: int = 15,
                    min_rows: int = 0) -> dict:
    """{grouping: group_metrics(...)} for each sensitive column and their combination."""
    return {name: group_metrics(np.asarray(y_true), np.asarray(y_pred), probs, labels, binary=binary, bins=bins,
                                min_rows=min_rows)
            for name, labels in groupings(columns).items()}


def fit_thresholds(scores: np.ndarray, y_true: np.ndarray, groups: np.ndarray, *, constraint: str) -> dict:
    """fairlearn ThresholdOptimizer on positive probabilities: {group: {p0, t0, op0, p1, t1, op1}} (JSON).

    A row of group g is predicted positive with probability p0·[score op0 t0] + p1·[score op1 t1]. Infinite
    thresholds (always/never positive) become -1.0 / 2.0, outside the probabilities' range, so JSON holds them.
    """
    _, fp = _fairlearn()
    from sklearn.base import BaseEstimator, ClassifierMixin

    class _Scores(ClassifierMixin, BaseEstimator):
        """The model's probabilities, already computed, as a prefit estimator (fairlearn needs one)."""

        def fit(self, X, y=None):
            self.classes_ = np.array([0, 1])
            return self

        def predict(self, X):
            return np.asarray(X)[:, 0]

    if len(set(np.asarray(y_true).tolist())) < 2:
        raise DlforgeError("evaluation.mitigate: the validation split holds one class only; thresholds cannot be "
                           "fitted", where="evaluation.mitigate", hint="use a larger data.split.val")
    optimizer = fp.ThresholdOptimizer(estimator=_Scores().fit(None), constraints=constraint, prefit=True,
                                      predict_method="predict", objective="accuracy_score")
    optimizer.fit(np.asarray(scores, dtype=np.float64).reshape(-1, 1), np.asarray(y_true), sensitive_features=groups)
    record = {}
    for group, entry in optimizer.interpolated_thresholder_.interpolation_dict.items():
        row = {}
        for i in (0, 1):
            operation = entry[f"operation{i}"]
            threshold = float(operation._threshold)  # fairlearn keeps no public accessor for it
            if math.isinf(threshold):
                threshold = -1.0 if threshold < 0 else 2.0
            row.update({f"p{i}": round(float(entry[f"p{i}"]), 9), f"t{i}": threshold, f"op{i}": operation._operator})
        record[str(group)] = row
    return record


__all__ = ["MISSING", "check_sensitive_columns", "combine", "fairness_report", "fit_thresholds", "group_labels",
           "group_metrics", "groupings"]
