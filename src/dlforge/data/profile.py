"""Column typing for `dlforge init`: what each column of a table looks like to a model.

Each column is typed from its values (number, category, binary, text, image path, sequence),
dropped when it cannot help (an identifier, a constant, an empty column), or refused with the
reason and what to write when no type fits.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from dlforge.core.errors import DataError
from dlforge.data.features.base import is_missing, missing_mask
from dlforge.data.images.folder import IMAGE_SUFFIXES

_NUMBERS = re.compile(r"^\s*\[?\s*-?[\d.eE+-]+(\s*[,;\s]\s*-?[\d.eE+-]+){2,}\s*\]?\s*$")
SAMPLE = 2000  # rows inspected per column: typing stays fast on large tables


@dataclass
class Choice:
    name: str
    kind: str  # an input type, or "drop"
    why: str
    extra: dict | None = None


def _non_missing(values: np.ndarray) -> list:
    return [v for v in values.tolist() if not is_missing(v)]


_CODE = re.compile(r"^\s*[+-]?0\d")  # 02134: a code (zip, account, ID), whose leading zeros a number would lose


def _numeric(values: np.ndarray) -> np.ndarray | None:
    if values.dtype.kind in "biuf":
        return values.astype(np.float64)
    if any(isinstance(v, str) and _CODE.match(v) for v in values[:SAMPLE].tolist()):
        return None
    parsed = pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(dtype=np.float64)
    present = ~missing_mask(values)
    return parsed if present.any() and np.isfinite(parsed[present]).all() else None


def _looks_like_images(strings: list[str], root: str | None) -> bool:
    sample = strings[:20]
    if not sample or not all(Path(s).suffix.lower() in IMAGE_SUFFIXES for s in sample):
        return False
    base = Path(root) if root else Path.cwd()
    return all((Path(s) if Path(s).is_absolute() else base / s).is_file() for s in sample[:5])


def type_column(name: str, values: np.ndarray, *, root: str | None, n_rows: int) -> Choice:
    if values.ndim == 4 or (values.ndim == 3 and values.dtype == np.uint8):
        return Choice(name, "image", f"image array {values.shape[1:]}")
    if values.ndim == 3:
        return Choice(name, "sequence", f"series array: {values.shape[1]} channel(s) x {values.shape[2]} steps")
    if values.ndim != 1:
        raise DataError(f"column '{name}' holds {values.ndim}-D values of shape {values.shape[1:]}, which no input type reads",
                        where=f"column '{name}'", hint=f"drop it with --drop {name}, or reshape it to (n, H, W[, C]) "
                        "images or (n, channels, length) series")
    present = _non_missing(values)
    if not present:
        return Choice(name, "drop", "empty: no values")
    kinds = {type(v).__name__ for v in present[:SAMPLE]}
    if kinds & {"dict", "list", "tuple", "bytes", "ndarray"}:
        raise DataError(f"column '{name}' holds {sorted(kinds)} values, which init cannot type",
                        where=f"column '{name}'",
                        hint=f"drop it with --drop {name}, or add it to the recipe yourself, e.g. "
                             f"`- {{name: {name}, type: text}}` for free text or `type: sequence` for number lists")
    distinct = len(set(map(str, present)))
    if distinct == 1:
        return Choice(name, "drop", f"constant: every value is {str(present[0])[:30]!r}")
    if distinct == 2:
        pair = sorted(map(str, set(map(str, present))))
        return Choice(name, "binary", f"2 values ({pair[0][:20]}, {pair[1][:20]})")
    numbers = _numeric(values)
    if numbers is not None:
        finite = numbers[np.isfinite(numbers)]
        is_int = np.all(finite == np.round(finite))
        if is_int and distinct == len(present) == n_rows and np.all(np.diff(finite) > 0):
            return Choice(name, "drop", "id-like: increasing integers, one per row")
        missing = n_rows - len(present)
        note = f", {missing} missing (filled with the mean, flagged)" if missing else ""
        return Choice(name, "number", f"{distinct} distinct numeric values{note}")
    strings = [str(v) for v in present[:SAMPLE]]
    if _looks_like_images(strings, root):
        return Choice(name, "image", "image file paths (files exist)")
    if sum(bool(_NUMBERS.match(s)) for s in strings) >= 0.95 * len(strings):
        return Choice(name, "sequence", "lists of numbers per cell")
    mean_words = float(np.mean([len(s.split()) for s in strings]))
    ratio = distinct / len(present)
    if mean_words >= 4 and ratio > 0.3:
        return Choice(name, "text", f"free text: {mean_words:.0f} words on average, {ratio:.0%} distinct")
    if ratio > 0.9 and distinct > 50:
        return Choice(name, "drop", f"id-like: {distinct} distinct short values in {len(present)} rows")
    if distinct > 100:
        return Choice(name, "category", f"{distinct} values; those seen fewer than 5 times share one bucket",
                      {"preprocessing": {"min_frequency": 5}})
    return Choice(name, "category", f"{distinct} values")


MIN_ROWS = 10  # fewer rows cannot be split into train, validation and test with every class in train


def type_target(name: str, values: np.ndarray) -> tuple[dict, str]:
    present = _non_missing(values)
    if not present:
        raise DataError(f"target '{name}' has no values", where="--target")
    if len(present) < MIN_ROWS:
        raise DataError(f"the data has {len(present)} row(s) with a value of '{name}'; at least {MIN_ROWS} are needed "
                        "to hold out validation and test rows and still train on every class", where="--target",
                        hint="use more data")
    counts = pd.Series([str(v) for v in present]).value_counts()
    if len(counts) == 1:
        raise DataError(f"target '{name}' has a single class ({counts.index[0]!r}); nothing to learn",
                        where="--target", hint="choose another target column")
    numbers = _numeric(values)
    if len(counts) == 2:
        return {"name": name, "type": "binary"}, f"binary: 2 values ({', '.join(sorted(counts.index))})"
    if numbers is not None and len(counts) > 20:
        return {"name": name, "type": "number"}, f"number: {len(counts)} distinct numeric values (regression)"
    if sum("|" in s for s in counts.index) > len(counts) / 2:
        return {"name": name, "type": "multilabel"}, "multilabel: '|'-separated label sets"
    if (counts < 2).sum() > len(counts) / 2:
        raise DataError(f"target '{name}' has {len(counts)} classes for {len(present)} rows; most have a single row, "
                        "so no split can train and test on them", where="--target",
                        hint="choose a target with repeated values (a class per several rows)")
    return {"name": name, "type": "category"}, f"category: {len(counts)} classes"


def leak(values: np.ndarray, target: np.ndarray, target_name: str) -> str | None:
    """Why the column gives the answer away: a relabelling of the target, or a few values that each fix the class."""
    frame = pd.DataFrame({"c": pd.Series(values).astype(str), "t": pd.Series(target).astype(str)})
    if frame["c"].nunique() > 20 or frame.groupby("c")["t"].nunique().max() != 1:
        return None
    if frame.groupby("t")["c"].nunique().max() == 1:
        return f"leaks the target: a relabelling of '{target_name}'"
    return (f"leaks the target: each of its {frame['c'].nunique()} values fixes '{target_name}' exactly "
            "(a label-derived field?); add it back if it is known at prediction time")


# ---------------------------------------------------------------- what init saw (for its comments; issue #12)
def describe_column(values: np.ndarray, kind: str, n_rows: int) -> str:
    """What a column looks like, in a few words: the share missing, and for numbers the skew, for categories the
    cardinality and the share of the most common value. Shown beside the encoding init chose."""
    if values.ndim != 1 or n_rows == 0:
        return ""
    missing = int(missing_mask(values).sum())
    share = missing / n_rows
    seen = [("<1%" if share < 0.01 else f"{share:.0%}") + " missing" if missing else "none missing"]
    if kind == "number":
        numbers = _numeric(values)
        finite = numbers[np.isfinite(numbers)] if numbers is not None else np.array([])
        if len(finite) > 2 and finite.std() > 0:
            skew = float(pd.Series(finite).skew())
            tail = " (long right tail)" if skew > 2 else " (long left tail)" if skew < -2 else ""
            seen.append(f"skew {skew:.1f}{tail}, range {finite.min():.3g} to {finite.max():.3g}")
    elif kind in ("category", "binary"):
        counts = pd.Series([str(v) for v in _non_missing(values)]).value_counts()
        if len(counts):
            top = counts.iloc[0] / counts.sum()
            seen.append(f"{len(counts)} distinct, most common {counts.index[0][:20]!r} "
                        + ("<1%" if top < 0.01 else f"{top:.0%}"))
    return "; ".join(seen)


def describe_target(values: np.ndarray, kind: str) -> str:
    """Class balance of a class target (the rarest class's share and how much rarer it is), or the skew of a number."""
    present = _non_missing(values)
    if not present:
        return ""
    if kind in ("binary", "category"):
        counts = pd.Series([str(v) for v in present]).value_counts()
        ratio = counts.iloc[0] / counts.iloc[-1]
        note = ": imbalanced, consider class weights" if ratio >= 3 else ""
        return f"rarest class {counts.index[-1][:20]!r} {counts.iloc[-1] / len(present):.0%} ({ratio:.1f}x rarer " \
               f"than {counts.index[0][:20]!r}){note}"
    if kind == "number":
        numbers = _numeric(values)
        finite = numbers[np.isfinite(numbers)] if numbers is not None else np.array([])
        if len(finite) > 2:
            return f"skew {float(pd.Series(finite).skew()):.1f}, range {finite.min():.3g} to {finite.max():.3g}"
    return ""


# Pandas' default strings for a missing cell (pandas._libs.parsers.STR_NA_VALUES, pandas 2.x): "None" and "NA" among
# them are real values in many tables. Listed so `init` can say which of them a file holds and how often.
DEFAULT_NA_STRINGS = ("", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
                      "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null")


def missing_strings(path: str | Path, *, limit_rows: int = 200_000) -> dict[str, int]:
    """{string: cells} for each of pandas' default missing-value strings found in a CSV (read as exact strings,
    the first `limit_rows` rows), most frequent first; {} for other formats or an unreadable file."""
    path = Path(path)
    if not path.is_file() or not path.name.lower().endswith((".csv", ".csv.gz", ".tsv")):
        return {}
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[], nrows=limit_rows, encoding="utf-8")
    except (UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError, ValueError):
        return {}
    counts = pd.Series(frame.to_numpy().ravel()).value_counts()
    found = {s: int(counts[s]) for s in DEFAULT_NA_STRINGS if s in counts.index}
    return dict(sorted(found.items(), key=lambda kv: -kv[1]))


_INDEXED = re.compile(r"^(.*?)(\d+)$")


def ordered_runs(table_columns: dict[str, np.ndarray], candidates: list[str], *, min_length: int = 8) -> list[list[str]]:
    """Runs of number columns that read as one signal: the same name stem with an increasing index (`x0 … x39`,
    `t_001 …`), at least `min_length` of them, the same scale (every column's spread within 10x of the run's
    median spread), and neighbours that move together (median correlation of adjacent columns >= 0.2: readings of
    one signal do; principal components `V1 … V28` or unrelated indexed fields do not). Returned in index order."""
    groups: dict[str, list[tuple[int, str]]] = {}
    for name in candidates:
        match = _INDEXED.match(name)
        if match:
            groups.setdefault(match.group(1), []).append((int(match.group(2)), name))
    runs = []
    for members in groups.values():
        members.sort()
        indices = [i for i, _ in members]
        if len(members) < min_length or len(set(np.diff(indices))) != 1:  # evenly spaced indices, no gaps
            continue
        spreads = []
        for _, name in members:
            numbers = _numeric(table_columns[name])
            finite = numbers[np.isfinite(numbers)] if numbers is not None else np.array([])
            spreads.append(float(np.subtract(*np.percentile(finite, [90, 10]))) if len(finite) else 0.0)
        middle = float(np.median(spreads))
        if middle > 0 and all(middle / 10 <= s <= middle * 10 for s in spreads) and _neighbours_agree(
                [table_columns[name] for _, name in members]):
            runs.append([name for _, name in members])
    return runs


def _neighbours_agree(columns: list[np.ndarray], *, threshold: float = 0.2) -> bool:
    matrix = np.stack([_numeric(c)[:SAMPLE] for c in columns], axis=1)
    matrix = matrix[np.isfinite(matrix).all(1)]
    if len(matrix) < 3:
        return False
    centred = matrix - matrix.mean(0)
    scale = np.sqrt((centred**2).sum(0))
    if not (scale > 0).all():
        return False
    adjacent = (centred[:, :-1] * centred[:, 1:]).sum(0) / (scale[:-1] * scale[1:])
    return float(np.median(adjacent)) >= threshold
