"""Number columns: NaN policy, optional missing indicator, standardisation fitted on train."""

from __future__ import annotations

import numpy as np
import torch

from typing import Annotated, Optional

from pydantic import Field

from dlforge.data.features.base import (Feature, TargetFeature, input_features, missing_mask, output_features,
                                        rows_preview)
from dlforge.data.features.wire import MAX_NUMBER, InputKind, input_kinds
from dlforge.core.errors import DataError


def to_float(values: np.ndarray, *, name: str, where: str) -> np.ndarray:
    try:
        return np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        import pandas as pd

        parsed = pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(dtype=np.float64)
        bad = np.isnan(parsed) & ~missing_mask(values)
        sample = values[np.flatnonzero(bad)[:3]].tolist()
        raise DataError(
            f"column '{name}' has non-numeric values {sample} (rows {rows_preview(bad)})",
            where=where,
            hint="declare it as type: category, or clean those rows",
        ) from None


@input_features.register("number")
class NumberFeature(Feature):
    def fit(self, values):
        x = to_float(values, name=self.name, where=self.field_path)
        prep = self.config.preprocessing
        nan = np.isnan(x)
        self._check_missing(nan)
        finite = x[~nan]
        if len(finite) == 0:
            raise DataError(f"column '{self.name}' has no values in the training split", where=self.field_path)
        self.fill_ = {"mean": float(finite.mean()), "median": float(np.median(finite)), "zero": 0.0, "error": 0.0}[prep.missing]
        self.indicator_ = bool(prep.missing_indicator and nan.any())
        if prep.normalization == "standard":
            self.shift_, self.scale_ = float(finite.mean()), float(finite.std()) or 1.0
        elif prep.normalization == "minmax":
            self.shift_, self.scale_ = float(finite.min()), float(np.ptp(finite)) or 1.0
        else:
            self.shift_, self.scale_ = 0.0, 1.0
        return self

    def check(self, values):
        self._check_missing(np.isnan(to_float(values, name=self.name, where=self.field_path)))

    def _check_missing(self, nan: np.ndarray) -> None:
        if nan.any() and self.config.preprocessing.missing == "error":
            raise DataError(
                f"column '{self.name}' has {int(nan.sum())} missing value(s) (data rows {rows_preview(nan)}) "
                "and preprocessing.missing is 'error'",
                where=f"{self.field_path}.preprocessing.missing",
                hint="set it to mean, median or zero, or remove those rows",
            )

    def transform(self, values):
        x = to_float(values, name=self.name, where=self.field_path)
        nan = np.isnan(x)
        self._check_missing(nan)
        self.count("filled_missing", nan.sum())
        filled = np.where(nan, self.fill_, x)
        scaled = ((filled - self.shift_) / self.scale_).astype(np.float32)
        columns = [scaled, nan.astype(np.float32)] if self.indicator_ else [scaled]
        return torch.from_numpy(np.stack(columns, axis=1))  # (n, 1 or 2)

    def state(self):
        return {"fill": self.fill_, "indicator": self.indicator_, "shift": self.shift_, "scale": self.scale_}

    def load_state(self, state):
        self.fill_, self.indicator_ = state["fill"], state["indicator"]
        self.shift_, self.scale_ = state["shift"], state["scale"]
        return self

    def signature(self):
        return {"type": "number", "dtype": "float", "width": 2 if self.indicator_ else 1}


@input_kinds.register("number")
class NumberKind(InputKind):
    """A float or null (missing: filled as in training); a form field is parsed from its text."""

    def api_field(self, name, sig):
        annotation = Optional[Annotated[float, Field(strict=True, allow_inf_nan=False, ge=-MAX_NUMBER, le=MAX_NUMBER)]]
        return annotation, Field(..., alias=name, description="A number; null means missing (filled as in training).",
                                 examples=[0.0])

    def form_part(self, sig):
        return {"type": "number", "minimum": -MAX_NUMBER, "maximum": MAX_NUMBER, "description": "A number (empty: missing)."}

    def form_value(self, value):
        if not isinstance(value, str):
            return value
        try:
            return float(value) if value.strip() else None
        except ValueError:
            raise ValueError("Input should be a valid number") from None

    def request_column(self, values, sig):
        return np.array([np.nan if v is None else v for v in values], dtype=np.float64)

    def sample(self, sig):
        return 0.0


@output_features.register("number")
class NumberTarget(TargetFeature):
    def fit(self, values):
        y = to_float(values, name=self.name, where=self.field_path)
        finite = y[~np.isnan(y)]
        normalize = self.config.normalize and len(finite) > 1
        self.shift_ = float(finite.mean()) if normalize else 0.0
        self.scale_ = (float(finite.std()) or 1.0) if normalize else 1.0
        return self

    def transform(self, values):
        y = to_float(values, name=self.name, where=self.field_path)
        if np.isnan(y).any():
            raise DataError(f"target '{self.name}' has missing values (rows {rows_preview(np.isnan(y))})",
                            where=self.field_path, hint="drop rows without a target")
        return torch.from_numpy(((y - self.shift_) / self.scale_).astype(np.float32))

    def decode(self, predictions):
        return predictions.squeeze(-1).double().numpy() * self.scale_ + self.shift_

    def state(self):
        return {"shift": self.shift_, "scale": self.scale_}

    def load_state(self, state):
        self.shift_, self.scale_ = state["shift"], state["scale"]
        return self

    def signature(self):
        return {"type": "number", "size": 1}
