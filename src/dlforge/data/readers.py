"""Reading a data source (a file or a built-in name) into a Table. One reader per format, by registry.

Text formats are read as written: every CSV cell is the string in the file, and only empty cells (plus the
strings the recipe lists in `data.na_values`) are missing. pandas' defaults would type each column from its
values and merge what the user wrote apart: `02134` and `2134` become one number, labels `1` and `1.0` or
`True` and `true` one class, and `NA`, `None`, `null` or `n/a` (real values in many tables: a category `None`,
the country code `NA`) missing. Numbers are parsed by the feature that reads the column as a number
(`features/number.py: to_float`), which names any cell that is not one. A duplicate header name is an error
(pandas renames the second `a.1`, and a recipe naming `a` silently reads only the first).

Every source is checked before it is opened: a regular file (a FIFO or a device would block or never end), no
larger than the memory that would hold it, and for CSV text rather than binary data.
"""

from __future__ import annotations

import codecs
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dlforge.core.errors import DataError
from dlforge.core.registry import Registry
from dlforge.data.builtin import locate_builtin
from dlforge.data.limits import check_fits
from dlforge.data.table import Table

# pandas' default missing-value strings (pandas.read_csv `na_values`), for `data.keep_default_na: true`.
DEFAULT_NA_STRINGS = ("", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
                      "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null")


@dataclass(frozen=True)
class ReadOptions:
    """How the cells of a text file become values. The default: empty cells are missing, nothing else."""

    na_values: tuple[str, ...] = ()
    keep_default_na: bool = False

    @classmethod
    def of(cls, data_config) -> "ReadOptions":
        """The options a recipe's `data` section asks for."""
        return cls(tuple(data_config.na_values), data_config.keep_default_na)

    def missing_strings(self) -> list[str]:
        return sorted({"", *self.na_values, *(DEFAULT_NA_STRINGS if self.keep_default_na else ())})


readers: Registry[Callable[..., Table]] = Registry("data format")


def check_file(path: Path, field: str) -> None:
    """A data file must be a regular file that fits in memory; anything else is refused before it is opened."""
    if not path.is_file():
        raise DataError(f"'{path}' is not a regular file (a FIFO, a device or a socket never ends or blocks)",
                        where=field, hint="give a CSV, Parquet or npz file, or a folder of them")
    check_fits(path.stat().st_size, what=f"reading '{path.name}'", where=field,
               hint="use a sample of the rows, or a smaller file")


def _first_bad_utf8(path: Path) -> tuple[int, int, bytes]:
    """(byte offset, line, bytes) of the first invalid UTF-8 in the file (.gz decompressed), reading in chunks.

    pandas' UnicodeDecodeError counts from the start of its current buffer, not of the file, so its offset is
    wrong past the first chunk: the file is scanned again here, once, on the error path only.
    """
    import gzip

    opener = gzip.open if path.suffix.lower() == ".gz" else open
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset, line = 0, 1
    with opener(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as exc:
                at = max(exc.start - len(decoder.getstate()[0]), 0)  # bytes held back from the last chunk
                return offset + at, line + chunk.count(b"\n", 0, at), chunk[at:at + 4]
            offset += len(chunk)
            line += chunk.count(b"\n")
    return offset, line, b""


def _refuse_binary(path: Path) -> None:
    import gzip

    opener = gzip.open if path.suffix.lower() == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            head = handle.read(1 << 16)
    except (OSError, EOFError) as exc:
        raise DataError(f"cannot read the file: {exc}", where=str(path)) from None
    if b"\x00" in head:
        at = head.index(b"\x00")
        raise DataError(f"holds NUL bytes (byte {at}): binary data, not CSV text", where=str(path),
                        hint="give a CSV (UTF-8 text), or set data.format for Parquet/npz") from None


def _longer_than_header(path: Path, fields: int) -> str:
    """'line N' of the first record with more than `fields` fields (the error path only)."""
    import csv
    import gzip

    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8", newline="") as f:
            reader = csv.reader(f)
            for row in reader:
                if len(row) > fields:
                    return f"line {reader.line_num}"
    except (OSError, UnicodeDecodeError, csv.Error):  # another compression: the message goes without the line
        pass
    return "a row"


@readers.register("csv")
def read_csv(path: Path, options: ReadOptions = ReadOptions()) -> Table:
    """Every cell as the string written in the file; empty cells (and options.na_values) missing."""
    import pandas as pd

    _refuse_binary(path)
    text = {"dtype": str, "keep_default_na": False, "encoding": "utf-8"}
    try:
        header = pd.read_csv(path, header=None, nrows=1, **text).iloc[0].tolist()
        frame = pd.read_csv(path, na_values=options.missing_strings(), **text)
    except UnicodeDecodeError:
        offset, line, found = _first_bad_utf8(path)
        raise DataError(f"not UTF-8 text (byte {offset}, line {line}: {found!r})", where=str(path),
                        hint="re-save the file as UTF-8") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, IndexError) as exc:
        raise DataError(f"cannot parse CSV: {str(exc) or 'no header row'}", where=str(path)) from None
    except (OSError, EOFError) as exc:  # a damaged .gz
        raise DataError(f"cannot read the file: {exc}", where=str(path)) from None
    if not isinstance(frame.index, pd.RangeIndex):  # pandas made the extra leading fields an index: data lost
        raise DataError(f"{_longer_than_header(path, len(header))} has more fields than the header's "
                        f"{len(header)}", where=str(path),
                        hint="quote text that holds commas (\"like, this\"), or name every column in the header")
    names = [str(n) for n in header]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        where = "; ".join(f"'{n}' in columns {[i + 1 for i, m in enumerate(names) if m == n]}" for n in dupes[:5])
        raise DataError(f"the header names a column more than once: {where}", where=str(path),
                        hint="give every column its own name (a reader would keep one of them and drop the other)")
    table = Table.from_frame(frame, str(path))
    table.root = str(path.resolve().parent)
    return table


@readers.register("parquet")
def read_parquet(path: Path, options: ReadOptions = ReadOptions()) -> Table:
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
    if options.na_values or options.keep_default_na:  # typed nulls are missing already; listed strings too
        text_columns = [c for c in frame.columns if frame[c].dtype == object or str(frame[c].dtype) == "str"]
        frame[text_columns] = frame[text_columns].where(~frame[text_columns].isin(options.missing_strings()))
    table = Table.from_frame(frame, str(path))
    table.root = str(path.resolve().parent)
    return table


@readers.register("npz")
def read_npz(path: Path, options: ReadOptions = ReadOptions()) -> Table:
    """Arrays named x_train/y_train[/x_test/y_test] (Keras style) become columns image/label with a split."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {k: archive[k] for k in archive.files}
    except (ValueError, OSError, EOFError, KeyError) as exc:  # not a zip, a damaged member, an object array
        raise DataError(f"cannot read npz: {exc}", where=str(path),
                        hint="an npz of plain arrays (numpy.savez), without Python objects") from None
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


def load_table(source: str, *, fmt: str = "auto", base_dir: Path | None = None, field: str = "data.source",
               options: ReadOptions = ReadOptions()) -> Table:
    """The Table behind a recipe's data.source (or `init`'s, `evaluate --data`'s, `predict --data`'s argument):
    the one reading path, so that a table is typed the same way for a recipe, for `init` and at prediction."""
    if source.startswith("builtin:"):
        found = locate_builtin(source.removeprefix("builtin:"))
        table = found if isinstance(found, Table) else load_table(str(found), field=field, options=options)
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

        return read_image_folder(path) if is_image_folder(path) else read_split_folder(path, options)
    check_file(path, field)
    kind = _format_of(path) if fmt == "auto" else fmt
    if kind not in readers:
        raise DataError(f"cannot tell the format of '{path.name}'", where=field,
                        hint=f"use one of {', '.join(readers.names())} or set data.format")
    table = readers.get(kind)(path, options)
    if table.n_rows == 0:
        raise DataError("the data has no rows", where=str(path))
    return table


def read_split_folder(folder: Path, options: ReadOptions = ReadOptions()) -> Table:
    """A folder with train.* and test.* files (csv, csv.gz, parquet) becomes one Table with a split."""
    found = {}
    for part in ("train", "val", "test"):
        matches = sorted(p for p in folder.iterdir() if p.name.split(".")[0] == part and p.is_file())
        if matches:
            found[part] = matches[0]
    if "train" not in found:
        raise DataError("a data folder needs a train.csv (or .csv.gz/.parquet) file", where=str(folder))
    for p in found.values():
        check_file(p, str(folder))
    tables = {part: readers.get(_format_of(p))(p, options) for part, p in found.items()}
    names = list(tables["train"].columns)
    columns = {}
    for name in names:
        missing = [part for part, t in tables.items() if name not in t.columns]
        if missing:
            raise DataError(f"column '{name}' is in train but not in {missing}", where=str(folder))
        columns[name] = np.concatenate([t.columns[name] for t in tables.values()])
    split = np.concatenate([np.full(t.n_rows, part) for part, t in tables.items()])
    return Table(columns, str(folder), split, root=str(folder.resolve()))
