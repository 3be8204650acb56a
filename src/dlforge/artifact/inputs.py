"""Turning what a caller hands a Predictor (records, dicts, DataFrames, arrays, image paths) into a Table.

Anything that does not fit the model's input signature is refused with the expected form.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dlforge.data.table import Table
from dlforge.core.errors import PredictError


def _describe(inputs: dict) -> str:
    return ", ".join(f"{n} ({s['type']}{' ' + 'x'.join(map(str, s['shape'])) if 'shape' in s else ''})"
                     for n, s in inputs.items())


def _image_array(value: np.ndarray, sig: dict, name: str) -> np.ndarray:
    """Numeric image data as (N, H, W[, C]); a single image gets a batch axis. Sizes must match the model."""
    channels, height, width = sig["shape"]
    if value.dtype == object or value.dtype.kind in "US":
        return value
    if value.ndim == 2 or (value.ndim == 3 and value.shape[-1] in (1, 3, 4) and value.shape[:2] == (height, width)):
        value = value[None]
    if value.ndim not in (3, 4) or tuple(value.shape[1:3]) != (height, width):
        raise PredictError(
            f"input '{name}' expects images of {height}x{width} pixels as (N, {height}, {width}[, C]) arrays; "
            f"got an array of shape {tuple(value.shape)}",
            hint="resize the arrays, or pass image file paths (those are resized for you)")
    return value


def _column(value, sig: dict, name: str) -> np.ndarray:
    if sig["type"] == "image":
        if isinstance(value, (str, Path, bytes)):
            return np.array([value], dtype=object)
        if isinstance(value, (list, tuple, np.ndarray)) and len(value) and isinstance(value[0], (str, Path, bytes)):
            return np.array(list(value), dtype=object)
        try:
            array = np.asarray(value)
        except ValueError:
            raise PredictError(f"input '{name}': images of different sizes cannot form one array",
                               hint="pass a list of file paths, or same-size arrays") from None
        if array.dtype.kind not in "biuf":
            raise PredictError(f"input '{name}' expects image arrays or file paths; got {array.dtype} values")
        return _image_array(array, sig, name)
    if sig["type"] == "sequence":
        if isinstance(value, str):
            return np.array([value], dtype=object)
        try:
            array = np.asarray(value, dtype=np.float32)
        except (ValueError, TypeError):  # ragged lists or strings of numbers: parsed (and padded) by the feature
            return np.array(list(value), dtype=object)
        return array[None] if array.ndim == 1 or (array.ndim == 2 and sig.get("channels", 1) > 1
                                                  and array.shape[0] == sig["channels"]) else array
    if np.isscalar(value) or value is None:
        return np.array([value], dtype=object)
    array = np.asarray(value, dtype=object if not isinstance(value, np.ndarray) else None)
    if array.ndim != 1:
        raise PredictError(f"input '{name}' ({sig['type']}) expects one value per row; got shape {array.shape}")
    return array


def to_table(data, inputs: dict[str, dict]) -> Table:
    """A Table with exactly the model's input columns."""
    names = list(inputs)
    if hasattr(data, "to_dict") and hasattr(data, "columns"):  # a pandas DataFrame
        data = {str(c): data[c].to_numpy() for c in data.columns}
    elif isinstance(data, list) and data and all(isinstance(r, dict) for r in data):
        missing = sorted({n for r in data for n in names if n not in r})
        if missing:
            raise PredictError(f"records lack input(s) {missing}", hint=f"each record needs: {_describe(inputs)}")
        data = {n: [r[n] for r in data] for n in names}
    elif not isinstance(data, dict):
        if len(names) != 1:
            raise PredictError(f"this model has {len(names)} inputs; pass a dict, records or a DataFrame",
                               hint=f"inputs: {_describe(inputs)}")
        data = {names[0]: data}
    missing = [n for n in names if n not in data]
    if missing:
        raise PredictError(f"input(s) {missing} are missing; got {sorted(map(str, data))}",
                           hint=f"the model expects: {_describe(inputs)}")
    columns = {n: _column(data[n], inputs[n], n) for n in names}
    lengths = {n: len(c) for n, c in columns.items()}
    if len(set(lengths.values())) > 1:
        raise PredictError(f"inputs have different numbers of rows: {lengths}")
    if not lengths or not next(iter(lengths.values())):
        raise PredictError("nothing to predict: the input has no rows")
    return Table(columns, "predict input")
