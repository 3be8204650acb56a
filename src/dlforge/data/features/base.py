"""What every feature does: fit on train, transform to a tensor, save/restore JSON state."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from dlforge.core.registry import Registry


class Feature:
    """An input column's preprocessing. The constructor only stores; `fit` learns state ending in `_`."""

    def __init__(self, config, *, field_path: str):
        self.config = config
        self.name = config.name
        self.field_path = field_path  # e.g. "inputs.2", for error messages
        self.report: dict[str, int] = {}  # counts of values changed by a policy (filled NaN, unknown, ...)

    def check(self, values: np.ndarray) -> None:
        """Validate the whole column before any split, so errors name rows of the user's file."""

    def fit(self, values: np.ndarray) -> "Feature":
        raise NotImplementedError

    def transform(self, values: np.ndarray) -> torch.Tensor:
        raise NotImplementedError

    def state(self) -> dict[str, Any]:
        """JSON-serialisable learned state."""
        raise NotImplementedError

    def load_state(self, state: dict[str, Any]) -> "Feature":
        raise NotImplementedError

    def signature(self) -> dict[str, Any]:
        """What a model needs to know about this input (sizes), and what a caller must send."""
        raise NotImplementedError

    def count(self, key: str, n: int) -> None:
        if n:
            self.report[key] = self.report.get(key, 0) + int(n)


class TargetFeature(Feature):
    """An output column: also maps model outputs back to the user's labels/values."""

    def check(self, values: np.ndarray) -> None:
        from dlforge.core.errors import DataError

        missing = np.array([s is None for s in as_strings(values)], dtype=bool)
        if missing.any():
            raise DataError(f"target '{self.name}' has {int(missing.sum())} missing value(s) (data rows {rows_preview(missing)})",
                            where=self.field_path, hint="drop rows without a target, or fill them")

    def decode(self, predictions: torch.Tensor) -> np.ndarray:
        raise NotImplementedError

    def label_names(self) -> list[str] | None:
        return None


input_features: Registry[type[Feature]] = Registry("input type")
output_features: Registry[type[TargetFeature]] = Registry("output type")


def is_missing(value) -> bool:
    """The one answer to "is this cell missing": None or a float NaN (what pandas reads for an empty CSV cell)."""
    return value is None or (isinstance(value, (float, np.floating)) and value != value)


def missing_mask(values: np.ndarray) -> np.ndarray:
    """`is_missing` per element, as a bool array; a numeric array is missing exactly where it is NaN."""
    if values.dtype.kind in "fc":
        return np.isnan(values)
    if values.dtype.kind != "O":
        return np.zeros(len(values), dtype=bool)
    return np.fromiter((is_missing(v) for v in values.tolist()), dtype=bool, count=len(values))


def as_strings(values: np.ndarray) -> np.ndarray:
    """Values as strings for vocabularies, with NaN/None as None (an integer-valued float is '3', not '3.0').

    Strings are kept exactly as written: ' pos' and 'pos' are two values, as '1' and '1.0' are (a CSV is read
    as text, data/readers.py). Merging them would hide a data problem; two labels that differ only in spaces
    show up as two classes in the report instead."""
    out = np.empty(len(values), dtype=object)
    for i, v in enumerate(values.tolist()):
        if is_missing(v):
            out[i] = None
        elif isinstance(v, float) and v.is_integer():
            out[i] = str(int(v))
        else:
            out[i] = v if isinstance(v, str) else str(v)
    return out


def rows_preview(mask: np.ndarray, limit: int = 5) -> str:
    """'3, 7, 11' — 0-based data row numbers (the header is not a row)."""
    rows = np.flatnonzero(mask)
    text = ", ".join(str(r) for r in rows[:limit])
    return text + (f" and {len(rows) - limit} more" if len(rows) > limit else "")
