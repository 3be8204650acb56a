"""`dlforge.audit(DATA_OR_RECIPE, target=...)`: every data check in one pass, written as audit.json + audit.html.

The data are read as `train` reads them (data/readers.py, or a recipe's `data` section), split as `train` would
split them (the source's own split, else the recipe's `data.split`, else its defaults), and each check looks at
the input columns with the target apart. Then problems are planted in a copy — k labels flipped, k rows copied
into another split with small edits — and the same checks run again: how many of the planted ones they find is
the audit's recall on this very data, and the share of new findings that are planted its precision.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from dlforge.audit import columns as col
from dlforge.audit import duplicates as dup
from dlforge.audit.labels import build_features, label_issues, out_of_fold_probabilities, require_sklearn
from dlforge.audit.outliers import outliers
from dlforge.core.errors import DataError, did_you_mean
from dlforge.audit.columns import missing_mask
from dlforge.data.features.base import as_strings
from dlforge.data.table import Table

REGRESSION_DISTINCT = 20  # a number target with more distinct values than this is a regression target


@dataclass
class AuditData:
    """What every check reads: the input columns, the target, the split per row, and how each column reads."""

    table: Table
    inputs: dict[str, np.ndarray]
    kinds: dict[str, str]
    target_name: str
    target: np.ndarray
    split: np.ndarray
    split_source: str
    task: str  # classification | regression
    source: str


@dataclass
class AuditResult:
    findings: dict
    out: Path | None = None
    lines: list[str] = field(default_factory=list)

    @property
    def html(self) -> Path | None:
        return self.out / "audit.html" if self.out else None

    @property
    def json(self) -> Path | None:
        return self.out / "audit.json" if self.out else None


def _is_recipe(data) -> bool:
    if not isinstance(data, (str, Path)):
        return True
    return Path(str(data)).suffix.lower() in (".yaml", ".yml")


def load_audit_data(data, *, target: str | None = None) -> AuditData:
    """Read DATA (a file, folder or builtin:NAME) or a recipe (path, dict or Recipe) for the audit."""
    from dlforge.data.prepare import read_table, stratify_labels
    from dlforge.data.readers import load_table
    from dlforge.data.split import split_rows

    if _is_recipe(data):
        from dlforge.recipe.io import load_recipe, recipe_base_dir

        recipe = load_recipe(data)
        table = read_table(recipe, recipe_base_dir(recipe))
        target = target or recipe.outputs[0].name
        names = [f.name for f in recipe.inputs]
        cfg, labels = recipe.data.split, (stratify_labels(recipe, table) if target == recipe.outputs[0].name else None)
        split_source = "the recipe's data.split"
    else:
        table = load_table(str(data), field="DATA")
        names = [n for n in table.columns if n != target]
        from dlforge.recipe.data import SplitConfig

        cfg, labels, split_source = SplitConfig(), None, "the default split of `dlforge train DATA --target`"
    if target is None:
        shown = ", ".join(list(table.columns)[:30])
        raise DataError(f"which column is the target? its columns: {shown}", where="--target",
                        hint=f"dlforge audit {data} --target {list(table.columns)[-1]}")
    if target not in table.columns:
        names_all = list(table.columns)
        raise DataError(f"target column '{target}' is not in the data{did_you_mean(target, names_all)}",
                        where="--target", hint=f"columns that exist: {', '.join(names_all[:40])}")
    values = table.columns[target]
    present = ~missing_mask(values) if values.ndim == 1 else np.ones(len(values), dtype=bool)
    if table.n_rows == 0 or not present.any():
        raise DataError(f"nothing to audit: the data has {table.n_rows} row(s) and none with a value of '{target}'",
                        where=table.origin, hint="give data with rows and a filled target column")
    distinct = pd.unique(pd.Series(as_strings(values[present]), dtype=object))
    if len(distinct) < 2:
        raise DataError(f"target '{target}' has a single class ({distinct[0]!r}) in all {int(present.sum())} row(s); "
                        "balance, leaks and label errors need two or more", where="--target",
                        hint="choose another target column, or add rows of the other classes")
    kind = col.column_kind(values, table.root)
    task = "regression" if kind == "number" and len(distinct) > REGRESSION_DISTINCT else "classification"
    if labels is None and task == "classification":
        labels = as_strings(values)
    rows = split_rows(table.n_rows, official=table.split, labels=labels, val=cfg.val, test=cfg.test, seed=cfg.seed)
    if table.split is not None and (table.split == "test").any():
        split_source = "the data's own split"
    split = np.empty(table.n_rows, dtype=object)
    for part, r in rows.items():
        split[r] = part
    inputs, kinds = col.read_columns({n: table.columns[n] for n in names}, table.root)
    return AuditData(table, inputs, kinds, target, values, split, split_source, task, table.origin)


def _targets(data: AuditData) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(rows with a target, target codes or floats for them, class names)."""
    present = np.flatnonzero(~missing_mask(data.target))
    if data.task == "regression":
        return present, col.as_numbers(data.target[present]), []
    codes, names = pd.factorize(pd.Series(as_strings(data.target[present]), dtype=object), sort=True)
    return present, codes.astype(np.int64), [str(n) for n in names]


def duplicate_findings(data: AuditData, prints: dup.Fingerprints, compared_columns: list[str]) -> tuple[dict, np.ndarray]:
    labels = as_strings(data.target)
    exact = dup.duplicate_groups(dup.groups(prints.exact))
    pairs = dup.image_pairs(prints.hashes, prints.thumbs) if prints.hashes is not None else []
    near_group = dup.groups(prints.near, pairs)
    near = dup.duplicate_groups(near_group)
    cross = dup.cross_split(near_group, data.split)
    result = {"exact": dup.summarise(exact, labels), "near": dup.summarise(near, labels),
              "near_method": ("perceptual hashes (average + difference hash, at most "
                              f"{dup.HASH_BITS} of 128 bits apart) and 16x16 grey thumbnails (mean difference at "
                              f"most {dup.THUMB_DIFF:g} of 255)" if prints.hashes is not None
                              else "text lower-cased without punctuation or extra spaces, numbers to 6 digits"),
              "compared_columns": compared_columns,
              "cross_split": {"rows": cross["rows"], "by_splits": cross["by_splits"],
                              "leaked_rows": cross["leaked_rows"][:200]}}
    if prints.hashes is not None and len(prints.hashes) > dup.PAIRWISE_LIMIT:
        result["note"] = f"over {dup.PAIRWISE_LIMIT:,} images: near twins are those with equal hashes only"
    return result, near_group


def find_label_errors(data: AuditData, features, present: np.ndarray, codes: np.ndarray, names: list[str],
                      *, seed: int = 0) -> tuple[dict, np.ndarray, np.ndarray]:
    """Findings, the rows checked (table rows) and the flagged rows (positions among the checked rows)."""
    from dlforge.audit.labels import FOLDS

    counts = np.bincount(codes)
    usable = counts[codes] >= FOLDS  # a class needs a row in every fold
    rows, labels = present[usable], pd.factorize(codes[usable], sort=True)[0]
    kept = [names[c] for c in np.flatnonzero(counts >= FOLDS)]
    if len(kept) < 2 or features is None:
        return {"skipped": "fewer than two classes with enough rows" if features is not None else
                "no input column a quick model can read"}, rows, np.array([], dtype=np.int64)
    sub = features.x.iloc[rows] if isinstance(features.x, pd.DataFrame) else features.x[rows]
    probabilities = out_of_fold_probabilities(type(features)(sub, features.model, features.description), labels,
                                              seed=seed)
    flagged, confidence = label_issues(labels, probabilities)
    accuracy = float((probabilities.argmax(1) == labels).mean())
    examples = [{"row": int(rows[i]), "given": kept[labels[i]], "suggested": kept[int(probabilities[i].argmax())],
                 "confidence_in_given": round(float(c), 4)} for i, c in zip(flagged[:50], confidence[:50])]
    files = [v for n, v in data.inputs.items() if data.kinds[n] == "image" and v.ndim == 1]
    for example in examples if files else []:  # an image is reviewed by its file, not its row number
        example["file"] = str(files[0][example["row"]])
    return {"model": f"{features.model} on {features.description}, {FOLDS}-fold out-of-fold probabilities",
            "out_of_fold_accuracy": round(accuracy, 4), "rows_checked": int(len(rows)), "count": int(len(flagged)),
            "share": round(len(flagged) / max(len(rows), 1), 4), "examples": examples}, rows, flagged


def audit(data, *, target: str | None = None, out: str | Path | None = None, plant: bool = True,
          plant_seeds: int = 1, flip_fraction: float = 0.02, duplicate_rows: int | None = None, seed: int = 0,
          progress: bool = False) -> AuditResult:
    """Audit DATA (a CSV/Parquet/npz file, an image folder, builtin:NAME) or a recipe; `target` names the column to
    predict (a recipe's first output by default). With `out`, writes audit.json and audit.html there."""
    require_sklearn()
    seconds: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[name] = round(now - clock, 3)
        clock = now
        if progress:
            print(f"audit: {name} {seconds[name]:.1f} s", flush=True)

    data = load_audit_data(data, target=target)
    lap("read")
    present, target_codes, names = _targets(data)
    findings: dict = {"source": data.source, "target": data.target_name, "task": data.task, "rows": data.table.n_rows,
                      "rows_without_target": int(data.table.n_rows - len(present)),
                      "split_source": data.split_source,
                      "splits": {p: int((data.split == p).sum()) for p in ("train", "val", "test")},
                      "columns": {n: {"kind": data.kinds[n]} for n in data.inputs}}
    if data.task == "classification":
        findings["class_balance"] = col.class_balance(data.target)
        findings["single_row_classes"] = [k for k, v in findings["class_balance"].items() if v == 1]
    for name, missing in col.missing_counts({**data.inputs, data.target_name: data.target}).items():
        findings["columns"].setdefault(name, {"kind": "target"})["missing"] = missing
    findings["constant_columns"] = col.constant_columns(data.inputs, data.kinds)
    findings["id_like_columns"] = col.id_like_columns(data.inputs, data.kinds)
    findings["leaky_columns"] = col.leaky_columns({n: v[present] for n, v in data.inputs.items() if v.ndim == 1},
                                                  data.kinds, target_codes, data.task, seed=seed)
    lap("columns")
    # an identifier makes every row unique: a row copied under a new ID is still a duplicate
    ids = {c["column"] for c in findings["id_like_columns"]}
    compared = {n: v for n, v in data.inputs.items() if n not in ids} or data.inputs
    prints = dup.fingerprints(compared, data.kinds, data.table.root)
    findings["duplicates"], _ = duplicate_findings(data, prints, list(compared))
    lap("duplicates")
    findings["outliers"] = outliers(data.inputs, data.kinds, seed=seed)
    lap("outliers")
    features, flagged, checked = None, np.array([], dtype=np.int64), present
    if data.task == "classification":
        usable = {n: v for n, v in data.inputs.items() if n not in {c["column"] for c in findings["leaky_columns"]}}
        features = build_features(usable, {n: data.kinds[n] for n in usable}, data.table.root)
        findings["label_errors"], checked, flagged = find_label_errors(data, features, present, target_codes, names,
                                                                       seed=seed)
        if findings["leaky_columns"]:
            findings["label_errors"]["note"] = "leaky columns left out of the quick model"
    else:
        findings["label_errors"] = {"skipped": "confident learning needs classes; the target is a number"}
    lap("label errors")
    if plant:
        from dlforge.audit.planted import measure

        findings["planted"] = measure(data, prints, compared=list(compared), features=features, checked=checked, clean_flagged=flagged,
                                      target_codes=target_codes, present=present, seeds=plant_seeds,
                                      flip_fraction=flip_fraction, duplicate_rows=duplicate_rows, seed=seed)
        lap("planted problems")
    findings["seconds"] = seconds
    result = AuditResult(findings, Path(out) if out is not None else None)
    result.lines = summary_lines(findings)
    findings["summary"] = result.lines
    if out is not None:
        from dlforge.audit.page import write_audit

        write_audit(Path(out), findings)
    return result


def summary_lines(f: dict) -> list[str]:
    """The findings in one line each, worst first, for the terminal and the top of the page."""
    lines = []
    for leak in f["leaky_columns"]:
        lines.append(f"leaky column '{leak['column']}': {leak['why']}; drop it unless it is known at prediction time")
    cross = f["duplicates"]["cross_split"]
    if cross["rows"]:
        by = ", ".join(f"{k} {v}" for k, v in cross["by_splits"].items())
        lines.append(f"{cross['rows']} val/test row(s) have a near twin in another split ({by}): their scores are "
                     "not held-out scores; deduplicate before splitting")
    labels = f.get("label_errors", {})
    if labels.get("count"):
        lines.append(f"{labels['count']} likely label error(s) ({labels['share']:.1%} of {labels['rows_checked']:,} "
                     f"rows, confident learning); review the listed rows")
    for key, what in (("exact", "exact"), ("near", "near")):
        d = f["duplicates"][key]
        if d["groups"]:
            conflict = f", {d['conflicting_labels']} with conflicting labels" if d["conflicting_labels"] else ""
            lines.append(f"{d['extra_rows']} {what} duplicate row(s) in {d['groups']} group(s){conflict}")
    if f.get("single_row_classes"):
        lines.append(f"{len(f['single_row_classes'])} class(es) with a single row: {f['single_row_classes'][:5]}")
    for c in f["constant_columns"]:
        lines.append(f"constant column '{c['column']}': {c['why']}")
    for c in f["id_like_columns"]:
        lines.append(f"ID-like column '{c['column']}': {c['why']}")
    missing = {n: c["missing"] for n, c in f["columns"].items() if c.get("missing")}
    if missing:
        worst = sorted(missing.items(), key=lambda kv: -kv[1])[:5]
        lines.append("missing values: " + ", ".join(f"{n} {m:,} ({m / f['rows']:.1%})" for n, m in worst))
    forest = f["outliers"].get("isolation_forest")
    if forest:
        lines.append(f"{forest['rows']:,} row(s) unusual for the IsolationForest")
    balance = f.get("class_balance") or {}
    if len(balance) >= 2:
        counts = list(balance.values())
        if counts[0] >= 3 * counts[-1]:
            lines.append(f"imbalanced classes: '{list(balance)[-1]}' is {counts[0] / counts[-1]:.1f}x rarer than "
                         f"'{list(balance)[0]}'")
    for name, p in f.get("planted", {}).items():
        if isinstance(p, dict) and "recall" in p:
            lines.append(f"planted {name.replace('_', ' ')}: found {p['found']} of {p['planted']} "
                         f"(recall {p['recall']:.0%}, precision {p['precision']:.0%})")
    return lines or ["no problems found"]
