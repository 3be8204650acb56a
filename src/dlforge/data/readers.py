"""Reading a data source (a file or a built-in name) into a Table. One reader per format, by registry."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from dlforge.core.errors import DataError
from dlforge.core.registry import Registry
from dlforge.data.builtin import locate_builtin
from dlforge.data.table import Table

readers: Registry[Callable[[Path], Table]] = Registry("data format")


@readers.register("csv")
def read_csv(path: Path) -> Table:
    import pandas as pd

    try:
        frame = pd.read_csv(path, encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"not UTF-8 text (byte {exc.start})", where=str(path), hint="re-save the file as UTF-8") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise DataError(f"cannot parse CSV: {exc}", where=str(path)) from None
    table = Table.from_frame(frame, str(path))
    table.root = str(path.resolve().parent)
    return table


@readers.register("parquet")
def read_parquet(path: Path) -> Table:
    """Parquet through pandas + pyarrow. pyarrow is the `parquet` extra (170 MB that CSV and npz users never need)."""
    import pandas as pd

    try:
        import pyarrow  # noqa: F401  (pandas' own error for a missing engine does not name the extra)
    except ImportError:
        raise DataError("reading Parquet needs pyarrow, which is not installed", where=str(path),
                        hint="pip install 'dlforge[parquet]' (or pip install pyarrow), or save the data as CSV") from None
    try:
        frame = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises many types for a bad file
        raise DataError(f"cannot read Parquet: {exc}", where=str(path)) from None
    table = Table.from_frame(frame, str(path))
    table.root = str(path.resolve().parent)
    return table


@readers.register("npz")
def read_npz(path: Path) -> Table:
    """Arrays named x_train/y_train[/x_test/y_test] (Keras style) become columns image/label with a split."""
    with np.load(path, allow_pickle=False) as archive:
        arrays = {k: archive[k] for k in archive.files}
    if "x_train" in arrays and "lengths_train" in arrays:
        return series_table(arrays, str(path))
    if "x_train" in arrays and "y_train" in arrays:
        parts = [p for p in ("train", "val", "test") if f"x_{p}" in arrays]
        image = np.concatenate([arrays[f"x_{p}"] for p in parts])
        label = np.concatenate([arrays[f"y_{p}"] for p in parts])
        split = np.concatenate([np.full(len(arrays[f"y_{p}"]), p) for p in parts])
        return Table({"image": image, "label": label}, str(path), split)
    lengths = {len(v) for v in arrays.values() if v.ndim > 0}
    if len(lengths) != 1:
        raise DataError(
            f"arrays have different first dimensions: { {k: v.shape for k, v in arrays.items()} }",
            where=str(path),
            hint="store one array per column with the same number of rows, or x_train/y_train/x_test/y_test",
        )
    return Table(arrays, str(path))


def series_table(arrays: dict[str, np.ndarray], origin: str) -> Table:
    """UCR/UEA-style npz (x_* (n, channels, length) NaN right-padded, lengths_*, y_*, class_names): columns
    `series` and `label` (class names, not codes), with the official split."""
    parts = [p for p in ("train", "val", "test") if f"x_{p}" in arrays]
    series = np.concatenate([arrays[f"x_{p}"] for p in parts]).astype(np.float32)
    codes = np.concatenate([arrays[f"y_{p}"] for p in parts])
    names = arrays.get("class_names")
    label = names[codes].astype(object) if names is not None and codes.dtype.kind in "iu" else codes
    split = np.concatenate([np.full(len(arrays[f"y_{p}"]), p) for p in parts])
    return Table({"series": series, "label": label}, origin, split)


def _format_of(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes[-1:] == [".gz"]:
        suffixes = suffixes[:-1]
    ext = suffixes[-1].lstrip(".") if suffixes else ""
    if ext in ("pq",):
        return "parquet"
    return ext


def load_table(source: str, *, fmt: str = "auto", base_dir: Path | None = None, field: str = "data.source") -> Table:
    """The Table behind a recipe's data.source."""
    if source.startswith("builtin:"):
        found = locate_builtin(source.removeprefix("builtin:"))
        table = found if isinstance(found, Table) else load_table(str(found), field=field)
        table.origin = source
        return table
    path = Path(source).expanduser()
    if not path.exists() and base_dir is not None and (base_dir / path).exists():
        path = base_dir / path
    if not path.exists():
        raise DataError(f"no such file or folder: {source}", where=field,
                        hint="give a path relative to the current directory or the recipe, or builtin:NAME")
    if path.is_dir():
        from dlforge.data.images.folder import is_image_folder, read_image_folder

        return read_image_folder(path) if is_image_folder(path) else read_split_folder(path)
    kind = _format_of(path) if fmt == "auto" else fmt
    if kind not in readers:
        raise DataError(f"cannot tell the format of '{path.name}'", where=field,
                        hint=f"use one of {', '.join(readers.names())} or set data.format")
    table = readers.get(kind)(path)
    if table.n_rows == 0:
        raise DataError("the data has no rows", where=str(path))
    return table


def read_split_folder(folder: Path) -> Table:
    """A folder with train.* and test.* files (csv, csv.gz, parquet) becomes one Table with a split."""
    found = {}
    for part in ("train", "val", "test"):
        matches = sorted(p for p in folder.iterdir() if p.name.split(".")[0] == part and p.is_file())
        if matches:
            found[part] = matches[0]
    if "train" not in found:
        raise DataError("a data folder needs a train.csv (or .csv.gz/.parquet) file", where=str(folder))
    tables = {part: readers.get(_format_of(p))(p) for part, p in found.items()}
    names = list(tables["train"].columns)
    columns = {}
    for name in names:
        missing = [part for part, t in tables.items() if name not in t.columns]
        if missing:
            raise DataError(f"column '{name}' is in train but not in {missing}", where=str(folder))
        columns[name] = np.concatenate([t.columns[name] for t in tables.values()])
    split = np.concatenate([np.full(t.n_rows, part) for part, t in tables.items()])
    return Table(columns, str(folder), split, root=str(folder.resolve()))
