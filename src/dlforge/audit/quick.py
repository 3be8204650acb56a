"""The cheap checks `dlforge train` runs before training: duplicates across the recipe's splits, leaky columns and
single-row classes. No model is fitted and no image is decoded (image files are compared by their bytes, arrays
by their pixels), so they cost well under a second on 50,000 rows; `dlforge audit` runs the full set.
"""

from __future__ import annotations

import numpy as np

from dlforge.audit import columns as col
from dlforge.audit import duplicates as dup
from dlforge.audit.columns import missing_mask
from dlforge.data.features.base import as_strings
from dlforge.data.table import Table


def quick_checks(table: Table, *, inputs: list[str], target: str, target_type: str,
                 splits: dict[str, np.ndarray]) -> dict:
    """{"lines": [...], "cross_split_duplicates", "leaked_rows" (the first 100), "leaky_columns",
    "single_row_classes"} for a recipe's table.

    `splits`: row indices per split (as `data.split.split_rows` makes them); `target_type`: the recipe's output type.
    """
    columns, kinds = col.read_columns({n: table.columns[n] for n in inputs if n in table.columns}, table.root)
    split = np.empty(table.n_rows, dtype=object)
    for part, rows in splits.items():
        split[rows] = part
    found: dict = {"cross_split_duplicates": 0, "leaked_rows": [], "leaky_columns": [], "single_row_classes": []}
    lines = []
    if columns and len({p for p in split.tolist() if p is not None}) > 1:
        ids = {c["column"] for c in col.id_like_columns(columns, kinds)}  # a copy under a new ID is still a twin
        compared = {n: v for n, v in columns.items() if n not in ids} or columns
        prints = dup.fingerprints(compared, kinds, table.root, perceptual=False, exact=False)
        cross = dup.cross_split(dup.groups(prints.near), split)
        found["cross_split_duplicates"], found["leaked_rows"] = cross["rows"], cross["leaked_rows"][:100]
        if cross["rows"]:
            by = ", ".join(f"{k} {v}" for k, v in cross["by_splits"].items())
            lines.append(f"{cross['rows']} val/test row(s) have a twin in another split ({by}), e.g. rows "
                         f"{cross['leaked_rows'][:5]}: their scores are not held-out scores")
    values = table.columns.get(target)
    if values is not None and values.ndim == 1:
        present = ~missing_mask(values)
        classes = target_type in ("category", "binary")
        if classes:
            strings = as_strings(values[present])
            names, codes = np.unique(strings.astype(str), return_inverse=True)
            counts = np.bincount(codes)
            found["single_row_classes"] = [str(n) for n in names[counts == 1]]
            if found["single_row_classes"]:
                lines.append(f"{len(found['single_row_classes'])} class(es) of '{target}' with a single row "
                             f"({', '.join(found['single_row_classes'][:5])}): no split can train and test on them")
            target_values, task = codes.astype(np.int64), "classification"
        elif target_type == "number":
            target_values, task = col.as_numbers(values[present]), "regression"
        else:
            target_values = None
        one_dim = {n: v[present] for n, v in columns.items() if v.ndim == 1}
        if target_values is not None and len(target_values) >= 30 and len(np.unique(target_values)) > 1:
            found["leaky_columns"] = col.leaky_columns(one_dim, kinds, target_values, task)
            for leak in found["leaky_columns"]:
                lines.append(f"column '{leak['column']}' {leak['why']}: a leak? drop it unless it is known at "
                             "prediction time")
    found["lines"] = lines
    return found
