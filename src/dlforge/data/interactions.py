"""Interaction tables for recommendation: side-feature joins, the duplicates policy, the leave-last-out split,
and the per-id side-feature catalogues a recommender scores all items (or a new user) from.

All of it runs on the whole table before the split (`read_table`), so that a policy's counts name rows of the
user's file and the split sees the final rows. Everything is numpy over whole columns: 100,000 ratings take
milliseconds.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import torch

from dlforge.core.errors import DataError
from dlforge.data.features.base import as_strings, missing_mask
from dlforge.data.table import Table


def id_inputs(recipe) -> dict[str, str]:
    """{'user': column, 'item': column} of a recommendation recipe ({} for any other)."""
    return {f.role: f.name for f in recipe.inputs if f.type == "id"}


def join_side_tables(recipe, table: Table, load) -> Table:
    """`data.join`: each side table's columns added to every row by its key (a left join); `load(source, field)`
    reads a table as data.source is read. A key absent from a side table gives missing cells, counted in a note."""
    columns = dict(table.columns)
    notes = list(table.notes)
    for i, join in enumerate(recipe.data.join):
        where = f"data.join.{i}"
        side = load(join.source, f"{where}.source")
        key = as_strings(table.column(join.key, field_path=f"{where}.key"))
        side_key = as_strings(side.column(join.key, field_path=f"{where}.key"))
        values, counts = np.unique(np.asarray([k for k in side_key if k is not None], dtype=object), return_counts=True)
        if (counts > 1).any():
            raise DataError(f"the side table {join.source} has {int((counts > 1).sum())} repeated key(s) in "
                            f"'{join.key}' (e.g. {values[counts > 1][0]!r}); a join needs one row per key",
                            where=where, hint="drop the repeated rows of the side table")
        position = {k: r for r, k in enumerate(side_key.tolist()) if k is not None}
        rows = np.fromiter((position.get(k, -1) for k in key.tolist()), dtype=np.int64, count=len(key))
        missing = rows < 0
        for name, col in side.columns.items():
            if name == join.key:
                continue
            if name in columns:
                raise DataError(f"the side table {join.source} has a column '{name}' that the data already has",
                                where=where, hint="rename one of them")
            out = col[np.where(missing, 0, rows)]
            if missing.any():
                out = out.astype(object)
                out[missing] = None
            columns[name] = out
        if missing.any():
            notes.append(f"join {join.source}: {int(missing.sum())} row(s) have a '{join.key}' the side table lacks "
                         "(their side features are missing)")
    return Table(columns, table.origin, table.split, notes, table.root, table.split_column)


def apply_duplicates(recipe, table: Table) -> tuple[Table, dict]:
    """The item id's `duplicates` policy on repeated (user, item) pairs; returns the table and {policy: count}."""
    ids = id_inputs(recipe)
    if set(ids) != {"user", "item"}:
        return table, {}
    item_cfg = next(f for f in recipe.inputs if f.type == "id" and f.role == "item")
    where = f"inputs.{recipe.inputs.index(item_cfg)}.duplicates"
    users = as_strings(table.column(ids["user"], field_path="inputs"))
    items = as_strings(table.column(ids["item"], field_path="inputs"))
    frame = pd.DataFrame({"u": users, "i": items})
    order = time_order(recipe, table)
    if order is not None:
        frame = frame.iloc[order]
    repeated = frame.duplicated(["u", "i"], keep=False).to_numpy()
    n_extra = int(frame.duplicated(["u", "i"]).sum())
    if n_extra == 0 or item_cfg.duplicates == "keep":
        return table, ({"duplicate_pairs_kept": n_extra} if n_extra else {})
    if item_cfg.duplicates == "error":
        rows = frame.index.to_numpy()[repeated][:5]
        raise DataError(f"{n_extra} repeated (user, item) pair(s) (data rows {', '.join(map(str, rows))})", where=where,
                        hint="set duplicates: last, first, mean or keep on the item id input, or clean the data")
    keep = "first" if item_cfg.duplicates == "first" else "last"
    chosen = np.sort(frame.index.to_numpy()[~frame.duplicated(["u", "i"], keep=keep).to_numpy()])
    if item_cfg.duplicates == "mean":  # the kept row (the last) carries the pair's mean target
        target = recipe.outputs[0].name
        values = pd.to_numeric(pd.Series(table.column(target, field_path="outputs.0")), errors="coerce")
        means = values.groupby([users, items]).transform("mean").to_numpy()
        table = Table({**table.columns, target: means}, table.origin, table.split, list(table.notes), table.root,
                      table.split_column)
    return table.take(chosen), {f"duplicate_pairs_dropped_{item_cfg.duplicates}": n_extra}


def time_order(recipe, table: Table) -> np.ndarray | None:
    """Row order by the leave-last-out time column (stable: ties keep file order), or None without one."""
    spec = recipe.data.split.leave_last_out
    if spec is None:
        return None
    where = "data.split.leave_last_out.time"
    raw = table.column(spec.time, field_path=where)
    times = pd.to_numeric(pd.Series(raw), errors="coerce")
    unreadable = times.isna().to_numpy() & ~missing_mask(np.asarray(raw))
    if unreadable.any():  # not numbers: dates (one warning-free parse per cell for mixed formats)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            parsed = pd.to_datetime(pd.Series(raw), errors="coerce", utc=True)
        times = pd.Series(parsed.to_numpy().astype("datetime64[ns]").astype("int64"), dtype="float64").where(
            parsed.notna().to_numpy())
    bad = times.isna().to_numpy()
    if bad.any():
        rows = np.flatnonzero(bad)
        raise DataError(f"the time column '{spec.time}' has {int(bad.sum())} missing or unreadable value(s) (data rows "
                        f"{', '.join(map(str, rows[:5]))}); a time split needs a time on every row", where=where,
                        hint="fill or drop those rows, or split without time (drop data.split.leave_last_out)")
    return np.argsort(times.to_numpy(), kind="stable")


def leave_last_out(recipe, table: Table) -> Table:
    """Each user's last interaction (by time) becomes test, the one before it val, the rest train. A source's own
    split column wins (said in a note)."""
    spec = recipe.data.split.leave_last_out
    if spec is None:
        return table
    if table.split is not None:
        table.notes.append("data.split.leave_last_out: the source's own split column is used; its time column "
                           "orders the rows")
        return table
    order = time_order(recipe, table)
    users = as_strings(table.column(spec.user, field_path="data.split.leave_last_out.user"))[order]
    # Position from the end within each user: 0 = last.
    from_end = pd.Series(users).groupby(users).cumcount(ascending=False).to_numpy()
    split = np.empty(table.n_rows, dtype=object)
    split[order] = np.where(from_end == 0, "test", np.where(from_end == 1, "val", "train"))
    counts = pd.Series(users).value_counts()
    few = int((counts < 3).sum())
    note = f"leave-last-out by '{spec.time}': each user's last interaction is test, the one before val"
    if few:
        note += f"; {few} user(s) with fewer than 3 interactions have no training rows for them"
    return Table(table.columns, table.origin, split, [*table.notes, note], table.root, table.split_column)


def prepare_interactions(recipe, table: Table, load) -> tuple[Table, dict]:
    """join -> duplicates -> leave-last-out, for a recommendation recipe; any other table passes unchanged."""
    if not id_inputs(recipe) and not recipe.data.join:
        return table, {}
    table = join_side_tables(recipe, table, load)
    table, counts = apply_duplicates(recipe, table)
    if counts:
        table.notes.append("duplicate (user, item) pairs: " + ", ".join(f"{n} {k.replace('_', ' ')}"
                                                                        for k, n in counts.items()))
    table = leave_last_out(recipe, table)
    order = time_order(recipe, table)
    if order is not None:  # rows in time order (ties keep file order): each split's pairs are each user's history
        table = table.take(order)
    return table, counts


def link_catalogue(inputs: dict, outputs: dict) -> None:
    """An interaction target ranks the item vocabulary: it learns the catalogue's size from the item id input."""
    items = [f for f in inputs.values() if f.config.type == "id" and f.config.role == "item"]
    for feature in outputs.values():
        if feature.config.type == "interaction" and items:
            feature.n_items_ = len(items[0].vocabulary_)


def side_catalogue(codes: torch.Tensor, values: torch.Tensor, cardinality: int) -> torch.Tensor:
    """(cardinality, ...) table of one side feature by id index: the value on the id's first training row; row 0
    (the unknown bucket) and ids without a row hold zeros (category 0 = unknown)."""
    out = torch.zeros((cardinality, *values.shape[1:]), dtype=values.dtype)
    first = torch.full((cardinality,), len(codes), dtype=torch.long)
    first.scatter_reduce_(0, codes, torch.arange(len(codes)), reduce="amin")
    has = first < len(codes)
    has[0] = False
    out[has] = values[first[has]]
    return out


def interaction_tensors(recipe, prepared) -> dict:
    """What a recommender needs beside its weights: every split's (user, item) index pairs (the seen items
    excluded at ranking and serving time), a rating output's (standardised) values per split (a rating-aware
    history reads them), training popularity (the negative sampler's and the baseline's), and
    each side feature's catalogue by id (to score all items, or a user from their features)."""
    ids = id_inputs(recipe)
    splits = prepared.splits
    pairs = {part: (s.x[ids["user"]], s.x[ids["item"]]) for part, s in splits.items()}
    n_items = prepared.signature()["inputs"][ids["item"]]["cardinality"]
    n_users = prepared.signature()["inputs"][ids["user"]]["cardinality"]
    train_items = pairs["train"][1]
    catalogues = {}
    for f in recipe.inputs:
        tower = getattr(f, "tower", None)
        if f.type == "id" or tower is None:
            continue
        owner = ids[tower]
        codes = splits["train"].x[owner]
        catalogues[f.name] = side_catalogue(codes, splits["train"].x[f.name], n_users if tower == "user" else n_items)
    output = recipe.outputs[0]
    ratings = ({part: s.y[output.name].float() for part, s in splits.items()} if output.type == "number" else {})
    return {"pairs": pairs, "n_users": n_users, "n_items": n_items, "ratings": ratings,
            "popularity": torch.bincount(train_items, minlength=n_items).float(), "catalogues": catalogues}


def read_pairs(path_or_table, user_feature, item_feature, user_column: str, item_column: str) -> tuple:
    """(user index, item index) tensors of a (user, item) table (the sampled protocol's negatives), through the
    fitted id vocabularies; rows with an unknown user or item are dropped and counted."""
    table = path_or_table
    users = user_feature.codes(table.column(user_column, field_path="outputs.0.sampled_negatives"))
    items = item_feature.codes(table.column(item_column, field_path="outputs.0.sampled_negatives"))
    keep = (users > 0) & (items > 0)
    return torch.from_numpy(users[keep]), torch.from_numpy(items[keep]), int((~keep).sum())


__all__ = ["apply_duplicates", "id_inputs", "interaction_tensors", "join_side_tables", "link_catalogue", "leave_last_out",
           "prepare_interactions", "read_pairs", "side_catalogue", "time_order"]
