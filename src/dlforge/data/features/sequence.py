"""Sequence columns (time series): (n, channels, length) arrays or strings of numbers, to a fixed-width tensor.

The output is (n, channels + 1, length): the normalised values with padding set to 0, and a last
channel that is 1 on real steps and 0 on padding, so encoders can mask without a second tensor.
A series ends after its last step holding any value (NaN right-padding, as the UCR/UEA npz files);
NaN inside a series is filled with the channel mean (0 after normalisation) and counted.
"""

from __future__ import annotations

import re

import numpy as np
import torch

from dlforge.data.features.base import Feature, input_features, is_missing, rows_preview
from dlforge.core.errors import DataError
from dlforge.data.features.wire import InputKind, input_kinds

_SPLIT = re.compile(r"[\s,;]+")


def parse_series(values: np.ndarray, *, name: str, where: str) -> np.ndarray:
    """float64 (n, channels, length), NaN right-padded; ragged strings are padded, non-numbers are errors."""
    if values.dtype != object and values.dtype.kind not in "US":
        array = np.asarray(values, dtype=np.float64)
        if array.ndim == 2:
            array = array[:, None, :]
        if array.ndim != 3:
            raise DataError(f"sequence '{name}' must be (n, length) or (n, channels, length); got shape {array.shape}",
                            where=where)
        return array
    rows = []
    for i, v in enumerate(values.tolist()):
        if isinstance(v, np.ndarray):
            rows.append(np.asarray(v, dtype=np.float64).reshape(-1))
            continue
        if is_missing(v):
            rows.append(np.zeros(0))
            continue
        text = str(v).strip().strip("[]()")
        parts = [p for p in _SPLIT.split(text) if p]
        try:
            rows.append(np.array([float(p) for p in parts], dtype=np.float64))
        except ValueError:
            bad = next(p for p in parts if not _is_float(p))
            raise DataError(f"sequence '{name}' row {i} has a non-numeric value {bad!r}", where=where,
                            hint="a sequence cell holds numbers separated by spaces, commas or semicolons, "
                                 "e.g. '0.1 0.5 0.9'") from None
    width = max((len(r) for r in rows), default=0)
    if width == 0:
        raise DataError(f"sequence '{name}' holds no numbers", where=where)
    out = np.full((len(rows), 1, width), np.nan)
    for i, r in enumerate(rows):
        out[i, 0, :len(r)] = r
    return out


def _is_float(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def lengths_of(series: np.ndarray) -> np.ndarray:
    """Steps up to and including the last one where any channel has a value."""
    present = ~np.isnan(series).all(axis=1)  # (n, L)
    return np.where(present.any(1), series.shape[2] - np.argmax(present[:, ::-1], axis=1), 0)


@input_features.register("sequence")
class SequenceFeature(Feature):
    def fit(self, values):
        series = parse_series(values, name=self.name, where=self.field_path)
        lengths = lengths_of(series)
        if (lengths == 0).all():
            raise DataError(f"sequence '{self.name}' is empty in every training row", where=self.field_path)
        self.channels_ = int(series.shape[1])
        self.length_ = int(self.config.preprocessing.max_length or lengths.max())
        valid = np.arange(series.shape[2])[None, :] < lengths[:, None]  # (n, L)
        steps = series.transpose(1, 0, 2)[:, valid]  # (C, valid steps)
        if self.config.preprocessing.normalization == "standard":
            self.mean_ = np.nanmean(steps, axis=1).tolist()
            self.std_ = [float(s) or 1.0 for s in np.nanstd(steps, axis=1)]
        else:
            self.mean_, self.std_ = [0.0] * self.channels_, [1.0] * self.channels_
        return self

    def transform(self, values):
        series = parse_series(values, name=self.name, where=self.field_path)
        if series.shape[1] != self.channels_:
            raise DataError(f"sequence '{self.name}' has {series.shape[1]} channel(s); the model was fitted on "
                            f"{self.channels_}", where=self.field_path)
        lengths = lengths_of(series)
        self.count("truncated", (lengths > self.length_).sum())
        self.count("empty", (lengths == 0).sum())
        lengths = np.minimum(lengths, self.length_)
        width = self.length_
        fixed = np.full((len(series), self.channels_, width), np.nan)
        take = min(width, series.shape[2])
        fixed[:, :, :take] = series[:, :, :take]
        valid = np.arange(width)[None, :] < lengths[:, None]  # (n, L)
        inside_nan = np.isnan(fixed) & valid[:, None, :]
        self.count("missing_filled", inside_nan.any(axis=(1, 2)).sum())
        if self.config.preprocessing.normalization == "per_series":
            masked = np.where(valid[:, None, :], fixed, np.nan)
            with np.errstate(all="ignore"), _quiet_nan():
                mean = np.nan_to_num(np.nanmean(masked, axis=2, keepdims=True))
                std = np.nan_to_num(np.nanstd(masked, axis=2, keepdims=True), nan=1.0)
            scaled = (fixed - mean) / np.where(std > 1e-8, std, 1.0)
        else:
            mean = np.asarray(self.mean_).reshape(1, -1, 1)
            scaled = (fixed - mean) / np.asarray(self.std_).reshape(1, -1, 1)
        scaled = np.where(np.isnan(scaled) | ~valid[:, None, :], 0.0, scaled)
        out = np.concatenate([scaled, valid[:, None, :].astype(np.float64)], axis=1)
        return torch.from_numpy(out.astype(np.float32))

    def state(self):
        return {"channels": self.channels_, "length": self.length_, "mean": self.mean_, "std": self.std_}

    def load_state(self, state):
        self.channels_, self.length_ = state["channels"], state["length"]
        self.mean_, self.std_ = state["mean"], state["std"]
        return self

    def signature(self):
        return {"type": "sequence", "dtype": "sequence", "channels": self.channels_, "length": self.length_}


class _quiet_nan:
    """Silences numpy's 'mean of empty slice' for empty series (they are counted as `empty`)."""

    def __enter__(self):
        import warnings

        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc):
        self._ctx.__exit__(*exc)


__all__ = ["SequenceFeature", "SequenceKind", "parse_series", "rows_preview"]


@input_kinds.register("sequence")
class SequenceKind(InputKind):
    """A series: numbers separated by spaces or commas (a string), or a list of numbers (one channel)."""

    def python_column(self, value, sig, name):
        if isinstance(value, str):
            return np.array([value], dtype=object)
        try:
            array = np.asarray(value, dtype=np.float32)
        except (ValueError, TypeError):  # ragged lists or strings of numbers: parsed (and padded) by the feature
            return np.array(list(value), dtype=object)
        channels = sig.get("channels", 1)
        one_series = array.ndim == 1 or (array.ndim == 2 and channels > 1 and array.shape[0] == channels)
        return array[None] if one_series else array

    def sample(self, sig):
        return " ".join(["0"] * max(1, int(sig.get("length") or 1)))

    def init_entry(self, values):
        return {"encoder": {"name": "cnn", "channels": [32, 64, 32]}}
