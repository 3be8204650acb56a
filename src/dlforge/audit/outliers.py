"""Outliers in number columns: a robust z-score per column, and an IsolationForest over all of them per row.

The robust z-score (Iglewicz & Hoaglin 1993) is 0.6745 (x - median) / MAD, flagged above 3.5; a column whose MAD is
0 (mostly one value, e.g. capital gains) uses the mean absolute deviation (x 1.2533) instead, and is skipped when
both are 0. The IsolationForest (scikit-learn, 100 trees of 256 rows, contamination 'auto') finds rows unusual
in their combination of values rather than in one column; its most anomalous rows are listed.
"""

from __future__ import annotations

import numpy as np

from dlforge.audit.columns import as_numbers

Z_LIMIT = 3.5


def robust_z(values: np.ndarray) -> np.ndarray | None:
    x = as_numbers(values)
    finite = x[np.isfinite(x)]
    if len(finite) < 10:
        return None
    median = np.median(finite)
    mad = np.median(np.abs(finite - median))
    if mad > 0:
        return 0.6745 * (x - median) / mad
    mean_dev = np.mean(np.abs(finite - median))
    return (x - median) / (1.2533 * mean_dev) if mean_dev > 0 else None


def outliers(columns: dict[str, np.ndarray], kinds: dict[str, str], *, seed: int = 0, top: int = 20) -> dict:
    numbers = [n for n, k in kinds.items() if k == "number" and columns[n].ndim == 1]
    per_column = {}
    for name in numbers:
        z = robust_z(columns[name])
        if z is not None:
            flagged = np.abs(np.nan_to_num(z)) > Z_LIMIT
            per_column[name] = {"rows": int(flagged.sum()), "examples": np.flatnonzero(flagged)[:10].tolist()}
    result = {"method": f"robust z-score > {Z_LIMIT} per column; IsolationForest over the number columns",
              "columns": per_column}
    if len(numbers) >= 2 and len(columns[numbers[0]]) >= 50:
        from sklearn.ensemble import IsolationForest

        matrix = np.column_stack([as_numbers(columns[n]) for n in numbers])
        matrix = np.where(np.isfinite(matrix), matrix, np.nanmedian(matrix, axis=0))
        forest = IsolationForest(n_estimators=100, max_samples=min(256, len(matrix)), random_state=seed, n_jobs=1).fit(matrix)
        score = forest.decision_function(matrix)  # < 0: anomalous
        order = np.argsort(score)
        result["isolation_forest"] = {"rows": int((score < 0).sum()),
                                      "most_anomalous": [{"row": int(r), "score": round(float(score[r]), 4)}
                                                         for r in order[:top]]}
    return result
