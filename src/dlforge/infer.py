"""`dlforge init`: a starter recipe inferred from the data, one YAML comment per decision.

Each column is typed from its values (number, category, binary, text, image path, sequence),
dropped when it cannot help (an identifier, a constant, an empty column, a copy of the target), or
refused with the reason and what to write when no type fits. The result trains as written.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from dlforge.data.image_folder import IMAGE_SUFFIXES
from dlforge.data.table import Table
from dlforge.errors import DataError, did_you_mean

_NUMBERS = re.compile(r"^\s*\[?\s*-?[\d.eE+-]+(\s*[,;\s]\s*-?[\d.eE+-]+){2,}\s*\]?\s*$")
SAMPLE = 2000  # rows inspected per column: typing stays fast on large tables


@dataclass
class Choice:
    name: str
    kind: str  # an input type, or "drop"
    why: str
    extra: dict | None = None


def _non_missing(values: np.ndarray) -> list:
    return [v for v in values.tolist() if not (v is None or (isinstance(v, float) and np.isnan(v)))]


def _numeric(values: np.ndarray) -> np.ndarray | None:
    if values.dtype.kind in "biuf":
        return values.astype(np.float64)
    parsed = pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(dtype=np.float64)
    present = ~pd.isna(pd.Series(values)).to_numpy()
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


def type_target(name: str, values: np.ndarray) -> tuple[dict, str]:
    present = _non_missing(values)
    if not present:
        raise DataError(f"target '{name}' has no values", where="--target")
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


def _leak(values: np.ndarray, target: np.ndarray, target_name: str) -> str | None:
    """Why the column gives the answer away: a relabelling of the target, or a few values that each fix the class."""
    frame = pd.DataFrame({"c": pd.Series(values).astype(str), "t": pd.Series(target).astype(str)})
    if frame["c"].nunique() > 20 or frame.groupby("c")["t"].nunique().max() != 1:
        return None
    if frame.groupby("t")["c"].nunique().max() == 1:
        return f"leaks the target: a relabelling of '{target_name}'"
    return (f"leaks the target: each of its {frame['c'].nunique()} values fixes '{target_name}' exactly "
            "(a label-derived field?); add it back if it is known at prediction time")


def infer_recipe(table: Table, source: str, target: str, *, drop: tuple[str, ...] = ()) -> str:
    """The recipe YAML text for `table`, predicting `target`."""
    if target not in table.columns:
        raise DataError(f"target column '{target}' is not in the data{did_you_mean(target, list(table.columns))}",
                        where="--target", hint=f"columns: {', '.join(table.columns)}")
    output, output_why = type_target(target, table.columns[target])
    inputs, dropped = [], []
    for name, values in table.columns.items():
        if name == target:
            continue
        if name in drop:
            dropped.append(Choice(name, "drop", "--drop"))
            continue
        choice = type_column(name, values, root=table.root, n_rows=table.n_rows)
        if choice.kind in ("binary", "category", "number") and output["type"] in ("binary", "category"):
            leak = _leak(values, table.columns[target], target)
            choice = Choice(name, "drop", leak) if leak else choice
        (dropped if choice.kind == "drop" else inputs).append(choice)
    if not inputs:
        raise DataError("no usable input column: every other column was dropped", where=table.origin,
                        hint="; ".join(f"{c.name}: {c.why}" for c in dropped)[:300])
    return _render(source, target, output, output_why, inputs, dropped, table)


def _input_entry(choice: Choice, table: Table) -> dict:
    entry = {"name": choice.name, "type": choice.kind, **(choice.extra or {})}
    if choice.kind == "text":
        entry["encoder"] = {"name": "embed", "dim": 64}
        entry["preprocessing"] = {"max_length": 256}
    elif choice.kind == "image" and table.columns[choice.name].dtype == object:
        entry["preprocessing"] = {"size": [64, 64], "fit": "pad"}
        entry["encoder"] = {"name": "cnn", "channels": [16, 32], "padding": "same", "global_pool": True, "dense": [64]}
    elif choice.kind == "image":
        entry["encoder"] = {"name": "cnn", "channels": [16, 32], "padding": "same", "dense": [64]}
    elif choice.kind == "sequence":
        entry["encoder"] = {"name": "cnn", "channels": [32, 64, 32]}
    return entry


def _flow(data: dict) -> str:
    import yaml

    return yaml.safe_dump(data, default_flow_style=True, width=1000, sort_keys=False).strip()


def _render(source, target, output, output_why, inputs, dropped, table: Table) -> str:
    name = re.sub(r"[^a-z0-9]+", "-", Path(source.removeprefix("builtin:")).name.split(".")[0].lower()).strip("-")
    official = table.split is not None and (table.split == "test").any()
    lines = [f"# Written by `dlforge init {source} --target {target}`: one comment per column decision; edit freely.",
             f"name: {name or 'experiment'}",
             "data:",
             f"  source: {json.dumps(source)}",
             f"  split: {{val: 0.1, test: {'official' if official else 0.2}, seed: 0}}"
             + ("  # the data's own test rows" if official else ""),
             "inputs:"]
    for choice in inputs:
        lines.append(f"  - {_flow(_input_entry(choice, table))}  # {choice.kind}: {choice.why}")
    if dropped:
        lines.append("# dropped columns:")
        lines += [f"#   {c.name}: {c.why}" for c in dropped]
    lines += ["outputs:", f"  - {_flow(output)}  # {output_why}",
              "combiner: {name: concat, layers: [64, 32]}",
              "training:",
              "  epochs: 10",
              "  batch_size: 64",
              "  optimizer: {name: adam, lr: 0.001}",
              f"  early_stopping: {{metric: val.loss, patience: 3}}",
              "  seed: 0", ""]
    return "\n".join(lines)


def init(data: str | Path, target: str, *, out: str | Path | None = None, drop: tuple[str, ...] = ()) -> str:
    """Infer a recipe for `data` (a path or builtin:NAME) predicting `target`; write it to `out` when given."""
    from dlforge.data.sources import load_table
    from dlforge.io_utils import write_text

    source = str(data)
    text = infer_recipe(load_table(source), source, target, drop=tuple(drop))
    if out is not None:
        write_text(Path(out), text)
    return text
