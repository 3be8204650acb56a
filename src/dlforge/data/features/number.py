"""Number columns: NaN policy, optional missing indicator, scaling fitted on train, optional embedding bins.

Scalings: standard, minmax, robust (median/IQR then a soft clip, as RealMLP: outliers stay ordered but
bounded) and quantile (rank → standard normal, as sklearn's QuantileTransformer: any skew becomes a bell).
A piecewise-linear embedding needs the bin edges of the scaled training values; they are state here and
reach the model through the signature (models never import data code).
A number target may be fitted in log space (`transform: log`), undone by `decode` and `to_units`.

Non-finite values never reach a model: `inf`/`-inf` count as missing (the column's `missing` policy fills
them, or refuses them under `missing: error`) and are reported apart ("filled infinite"); a column whose
statistics overflow float64 (values near 1e308 made `"scale": inf`, so the column was 0 in every row), or a
value that leaves float32's range once scaled, is refused with its rows.
"""

from __future__ import annotations

import numpy as np
import torch

from typing import Annotated, Optional

from pydantic import Field

from dlforge.data.features.base import (Feature, TargetFeature, input_features, missing_mask, output_features,
                                        rows_preview)
from dlforge.data.features.wire import MAX_NUMBER, InputKind, input_kinds
from dlforge.core.errors import DataError


# Values this far from the training range overflow float32 once scaled (float32's largest is 3.4e38).
FLOAT32_MAX = float(np.finfo(np.float32).max)


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


def finite_or_refuse(stats: dict[str, float], x: np.ndarray, *, name: str, where: str, rows: str = "data rows") -> None:
    """Refuse a column whose learned statistics are not finite (float64 overflowed), naming its largest values."""
    bad = [k for k, v in stats.items() if not np.isfinite(v)]
    if not bad:
        return
    magnitude = np.abs(np.where(np.isfinite(x), x, 0.0))
    huge = magnitude > np.sqrt(np.finfo(np.float64).max / max(len(x), 1))  # where squares (and sums) overflow
    if not huge.any():
        huge = magnitude == magnitude.max()
    sample = x[np.flatnonzero(huge)[:3]].tolist()
    raise DataError(f"column '{name}' has values too large to normalise: its {', '.join(bad)} overflow(s) float64 "
                    f"(values {sample} in {rows} {rows_preview(huge)})", where=where,
                    hint="rescale the column (e.g. a log or a unit change), or remove those rows")


@input_features.register("number")
class NumberFeature(Feature):
    def fit(self, values):
        x = to_float(values, name=self.name, where=self.field_path)
        prep = self.config.preprocessing
        nan = ~np.isfinite(x)  # NaN and +-inf alike: both are missing
        self._check_missing(x)
        finite = x[~nan]
        if len(finite) == 0:
            raise DataError(f"column '{self.name}' has no values in the training split", where=self.field_path)
        self.fill_, self.shift_, self.scale_ = self._statistics(finite)
        self.indicator_ = bool(prep.missing_indicator and nan.any())
        finite_or_refuse({"fill value": self.fill_, "mean": self.shift_, "scale": self.scale_}, x,
                         name=self.name, where=self.field_path, rows="training-split rows")
        self.clip_ = prep.normalization == "robust"
        self.quantiles_ = None
        if prep.normalization == "quantile":
            self.quantiles_ = np.quantile(finite, np.linspace(0, 1, min(N_QUANTILES, len(finite)))).tolist()
        self.edges_ = None
        embedding = getattr(self.config, "embedding", None)
        if embedding is not None and embedding.name == "piecewise_linear":
            self.edges_ = bin_edges(self._scale(finite), embedding.bins)
        return self

    def _statistics(self, finite: np.ndarray) -> tuple[float, float, float]:
        """(fill, shift, scale) of the finite values; inf/NaN where float64 overflows (refused by the caller).
        Quantile scaling has no shift or scale: its state is the quantiles."""
        prep = self.config.preprocessing
        if len(finite) == 0:
            return 0.0, 0.0, 1.0
        with np.errstate(over="ignore", invalid="ignore"):
            fill = {"mean": float(finite.mean()), "median": float(np.median(finite)), "zero": 0.0,
                    "error": 0.0}[prep.missing]
            if prep.normalization == "standard":
                return fill, float(finite.mean()), float(finite.std()) or 1.0
            if prep.normalization == "minmax":
                return fill, float(finite.min()), float(np.ptp(finite)) or 1.0
            if prep.normalization == "robust":
                q25, q50, q75 = np.quantile(finite, [0.25, 0.5, 0.75])
                # IQR/1.349 is the std of a normal; a column with a zero IQR (mostly one value) falls back to its std.
                return fill, float(q50), float(q75 - q25) / 1.349 or float(finite.std()) or 1.0
        return fill, 0.0, 1.0

    def _scale(self, x: np.ndarray) -> np.ndarray:
        """The fitted scaling of NaN-free values, as float32."""
        if self.quantiles_ is not None:
            return quantile_normal(x, np.asarray(self.quantiles_))
        scaled = (x - self.shift_) / self.scale_
        if self.clip_:
            scaled = scaled / np.sqrt(1 + (scaled / 3) ** 2)
        return scaled.astype(np.float32)

    def check(self, values):
        x = to_float(values, name=self.name, where=self.field_path)
        self._check_missing(x)
        # On the whole column, before the split, so the error names rows of the user's file.
        fill, shift, scale = self._statistics(x[np.isfinite(x)])
        finite_or_refuse({"fill value": fill, "mean": shift, "scale": scale}, x, name=self.name, where=self.field_path)

    def _check_missing(self, x: np.ndarray) -> None:
        nan = ~np.isfinite(x)
        if nan.any() and self.config.preprocessing.missing == "error":
            infinite = np.isinf(x)
            what = f"{int(nan.sum())} missing value(s)" + (f" ({int(infinite.sum())} infinite)" if infinite.any() else "")
            raise DataError(
                f"column '{self.name}' has {what} (data rows {rows_preview(nan)}) and preprocessing.missing is 'error'",
                where=f"{self.field_path}.preprocessing.missing",
                hint="set it to mean, median or zero, or remove those rows",
            )

    def transform(self, values):
        x = to_float(values, name=self.name, where=self.field_path)
        nan = ~np.isfinite(x)
        self._check_missing(x)
        infinite = np.isinf(x)
        self.count("filled_missing", (nan & ~infinite).sum())
        self.count("filled_infinite", infinite.sum())
        filled = np.where(nan, self.fill_, x)
        with np.errstate(over="ignore"):
            scaled64 = (filled - self.shift_) / self.scale_
        out_of_range = ~(np.abs(scaled64) <= FLOAT32_MAX)
        if out_of_range.any() and self.quantiles_ is None:  # quantile scaling is bounded by construction
            sample = x[np.flatnonzero(out_of_range)[:3]].tolist()
            raise DataError(f"column '{self.name}' has values {sample} (data rows {rows_preview(out_of_range)}) too far "
                            f"from its training range (mean {self.shift_:.4g}, scale {self.scale_:.4g}) to be represented",
                            where=self.field_path, hint="check those values (a unit or a sentinel such as 1e308?)")
        scaled = self._scale(filled)
        columns = [scaled, nan.astype(np.float32)] if self.indicator_ else [scaled]
        return torch.from_numpy(np.stack(columns, axis=1))  # (n, 1 or 2)

    def state(self):
        state = {"fill": self.fill_, "indicator": self.indicator_, "shift": self.shift_, "scale": self.scale_}
        if self.clip_:
            state["clip"] = True
        if self.quantiles_ is not None:
            state["quantiles"] = self.quantiles_
        if self.edges_ is not None:
            state["edges"] = self.edges_
        return state

    def load_state(self, state):
        self.fill_, self.indicator_ = state["fill"], state["indicator"]
        self.shift_, self.scale_ = state["shift"], state["scale"]
        self.clip_ = bool(state.get("clip", False))
        self.quantiles_ = state.get("quantiles")
        self.edges_ = state.get("edges")
        return self

    def signature(self):
        sig = {"type": "number", "dtype": "float", "width": 2 if self.indicator_ else 1}
        embedding = getattr(self.config, "embedding", None)
        if embedding is not None:
            sig["embedding"] = {"name": embedding.name, "dim": embedding.dim, "frequencies": embedding.frequencies,
                                "sigma": embedding.sigma, **({"edges": self.edges_} if self.edges_ is not None else {})}
        return sig


N_QUANTILES = 1000  # sklearn QuantileTransformer's default


def quantile_normal(x: np.ndarray, quantiles: np.ndarray) -> np.ndarray:
    """Rank of x among the training quantiles (interpolated; ties get the middle rank), mapped through the
    inverse normal CDF and clipped at probability 1e-7 (about ±5.2), as sklearn's QuantileTransformer."""
    levels = np.linspace(0, 1, len(quantiles))
    # Forward and backward interpolation averaged: a value repeated over many quantiles maps to their middle.
    ranks = 0.5 * (np.interp(x, quantiles, levels) - np.interp(-x, -quantiles[::-1], -levels[::-1]))
    ranks = np.clip(ranks, 1e-7, 1 - 1e-7)
    return torch.special.ndtri(torch.from_numpy(ranks)).numpy().astype(np.float32)


def bin_edges(values: np.ndarray, bins: int) -> list[float]:
    """Up to `bins`+1 distinct quantile edges of the (scaled) training values: a column with few distinct values
    gets fewer bins, one per gap between them at most."""
    values = values.astype(np.float64)
    distinct = np.unique(values)
    # Few distinct values: they are the edges themselves (quantiles would fall between them and split nothing).
    edges = distinct if len(distinct) <= bins + 1 else np.unique(np.quantile(values, np.linspace(0, 1, bins + 1)))
    if len(edges) < 2:
        edges = np.array([edges[0] - 1.0, edges[0] + 1.0]) if len(edges) else np.array([-1.0, 1.0])
    return [float(e) for e in edges]


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

    def init_entry(self, values):
        """The strong tabular default (issue #12): skewed columns scaled by rank (quantile), others standardised;
        every column embedded with periodic features (PLR, Gorishniy et al. 2022; sigma 1 beat sigma 0.1 and 0.3
        and piecewise-linear bins on adult and compas, seed 0: adult accuracy 0.864 vs 0.856 with PLE)."""
        return {"preprocessing": {"normalization": "quantile" if is_skewed(values) else "standard"},
                "embedding": dict(INIT_EMBEDDING)}


INIT_EMBEDDING = {"name": "periodic", "frequencies": 16, "sigma": 1.0, "dim": 16}
SKEW_LIMIT = 1.0  # |sample skewness| above this (income, amounts, counts) is "skewed"


def skewness(values: np.ndarray) -> float:
    """The sample skewness of a column's finite values (0 when constant or empty)."""
    import pandas as pd

    x = pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(dtype=np.float64)
    x = x[np.isfinite(x)]
    std = x.std() if len(x) > 2 else 0.0
    return float(np.mean(((x - x.mean()) / std) ** 3)) if std > 0 else 0.0


def is_skewed(values: np.ndarray) -> bool:
    return abs(skewness(values)) > SKEW_LIMIT


@output_features.register("number")
class NumberTarget(TargetFeature):
    def fit(self, values):
        self.log_ = getattr(self.config, "transform", "none") == "log"
        y = self._forward(to_float(values, name=self.name, where=self.field_path))
        finite = y[np.isfinite(y)]  # infinite targets are refused by transform, with their rows
        normalize = self.config.normalize and len(finite) > 1
        with np.errstate(over="ignore", invalid="ignore"):
            self.shift_ = float(finite.mean()) if normalize else 0.0
            self.scale_ = (float(finite.std()) or 1.0) if normalize else 1.0
        finite_or_refuse({"mean": self.shift_, "scale": self.scale_}, y, name=self.name, where=self.field_path)
        return self

    def transform(self, values):
        y = to_float(values, name=self.name, where=self.field_path)
        if np.isnan(y).any():
            raise DataError(f"target '{self.name}' has missing values (rows {rows_preview(np.isnan(y))})",
                            where=self.field_path, hint="drop rows without a target")
        with np.errstate(over="ignore"):
            scaled = (self._forward(y) - self.shift_) / self.scale_
        bad = ~(np.abs(scaled) <= FLOAT32_MAX)
        if bad.any():  # a target of inf (or one that overflows float32) would make every loss inf
            raise DataError(f"target '{self.name}' has values {y[np.flatnonzero(bad)[:3]].tolist()} that are infinite "
                            f"or out of range (rows {rows_preview(bad)})", where=self.field_path,
                            hint="drop or correct those rows")
        return torch.from_numpy(scaled.astype(np.float32))

    def check(self, values):
        super().check(values)
        if getattr(self.config, "transform", "none") == "log":
            self.log_ = True
            self._forward(to_float(values, name=self.name, where=self.field_path))  # names the user's rows

    def _forward(self, y: np.ndarray) -> np.ndarray:
        """The user's values in training space: log(1 + y) under `transform: log` (NaN left for the callers)."""
        if not self.log_:
            return y
        negative = y < 0
        if negative.any():
            raise DataError(f"target '{self.name}' has negative values {y[negative][:3].tolist()} (rows "
                            f"{rows_preview(negative)}), and transform: log needs y >= 0",
                            where=f"{self.field_path}.transform", hint="set transform: none, or shift the target")
        return np.log1p(y)

    def to_units(self, encoded: torch.Tensor) -> torch.Tensor:
        """Encoded targets or predictions (training space) back in the user's units (metrics are scored there)."""
        value = encoded.double() * self.scale_ + self.shift_
        # exp of a wild prediction would overflow float64 to inf: clip at e^700.
        return torch.expm1(value.clamp(max=700.0)) if self.log_ else value

    def decode(self, predictions):
        return self.to_units(predictions.squeeze(-1)).numpy()

    def state(self):
        return {"shift": self.shift_, "scale": self.scale_, **({"transform": "log"} if self.log_ else {})}

    def load_state(self, state):
        self.shift_, self.scale_ = state["shift"], state["scale"]
        self.log_ = state.get("transform") == "log"
        return self

    def signature(self):
        return {"type": "number", "size": 1}
