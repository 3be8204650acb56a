"""Seeded, stratified train/val/test split that respects a source's official test split."""

from __future__ import annotations

import numpy as np

from dlforge.core.errors import DataError


def _stratified_take(rows: np.ndarray, labels: np.ndarray | None, fraction: float, rng) -> tuple[np.ndarray, np.ndarray]:
    """Split `rows` into (rest, taken) with `fraction` of each class taken (at least one row per class that has 2+)."""
    if fraction <= 0:
        return rows, rows[:0]
    if labels is None:
        shuffled = rng.permutation(rows)
        n_take = int(round(len(rows) * fraction))
        return np.sort(shuffled[n_take:]), np.sort(shuffled[:n_take])
    taken = []
    for value in np.unique(labels[rows]):
        members = rng.permutation(rows[labels[rows] == value])
        n_take = int(round(len(members) * fraction))
        if n_take == 0 and len(members) >= 2:
            n_take = 1
        taken.append(members[:n_take])
    taken = np.sort(np.concatenate(taken)) if taken else rows[:0]
    return np.setdiff1d(rows, taken, assume_unique=True), taken


def _grouped_take(rows: np.ndarray, labels: np.ndarray | None, groups: np.ndarray, fraction: float,
                  rng) -> tuple[np.ndarray, np.ndarray]:
    """As `_stratified_take`, but whole groups move: `fraction` of the groups (per majority class) is taken."""
    if fraction <= 0 or len(rows) == 0:
        return rows, rows[:0]
    names, codes = np.unique(groups[rows].astype(str), return_inverse=True)
    unit_labels = None
    if labels is not None:  # each group's most common class, so rare classes still reach every split
        unit_labels = np.empty(len(names), dtype=object)
        for g in range(len(names)):
            values, counts = np.unique(labels[rows][codes == g].astype(str), return_counts=True)
            unit_labels[g] = values[np.argmax(counts)]
    _, taken_units = _stratified_take(np.arange(len(names)), unit_labels, fraction, rng)
    taken = np.isin(codes, taken_units)
    return rows[~taken], rows[taken]


def split_rows(n_rows: int, *, official: np.ndarray | None, labels: np.ndarray | None,
               val: float, test, seed: int, groups: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Row indices of each split. `labels` (hashable per row) enables stratification; `groups` keeps each group's
    rows in one split (the official test split is taken as it is)."""
    rng = np.random.default_rng(seed)
    take = _stratified_take if groups is None else (
        lambda rows, lab, fraction, rng: _grouped_take(rows, lab, groups, fraction, rng))
    all_rows = np.arange(n_rows)
    use_official = official is not None and test in ("auto", "official") and (official == "test").any()
    if test == "official" and not use_official:
        raise DataError("data.split.test is 'official' but the source has no test split",
                        where="data.split.test", hint="give a fraction such as 0.2")
    if use_official:
        test_rows = all_rows[official == "test"]
        pool = all_rows[official != "test"]
        official_val = all_rows[official == "val"]
        if len(official_val):
            return {"train": all_rows[official == "train"], "val": official_val, "test": test_rows}
    else:
        fraction = 0.2 if test == "auto" else float(test)
        pool, test_rows = take(all_rows, labels, fraction, rng)
    # The val fraction is of the rows left for training, as Keras' validation_split.
    train_rows, val_rows = take(pool, labels, val, rng)
    return {"train": train_rows, "val": val_rows, "test": test_rows}


def check_classes_in_train(labels: np.ndarray, splits: dict[str, np.ndarray], column: str) -> None:
    seen = set(labels[splits["train"]].tolist())
    for part in ("val", "test"):
        missing = sorted(set(labels[splits[part]].tolist()) - seen, key=str)
        if missing:
            raise DataError(
                f"class(es) {missing[:5]} of '{column}' appear in {part} but have no training rows",
                where="data.split",
                hint="use more data, a smaller val/test fraction, or drop rare classes",
            )
