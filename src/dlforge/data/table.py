"""A Table: named columns as numpy arrays, plus the source's own split if it has one.

Columns are arrays rather than a DataFrame because image columns are (n, H, W[, C]) arrays.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from dlforge.core.errors import DataError, did_you_mean


@dataclass
class Table:
    columns: dict[str, np.ndarray]
    origin: str
    # "train" / "val" / "test" per row when the source has an official split, else None.
    split: np.ndarray | None = None
    notes: list[str] = field(default_factory=list)
    # Folder that relative file paths in the columns (image paths) are relative to; None: the current directory.
    root: str | None = None
    # The column of the file that became `split` (and is no longer a column), to explain a recipe that names it.
    split_column: str | None = None

    def __post_init__(self):
        lengths = {name: len(col) for name, col in self.columns.items()}
        if len(set(lengths.values())) > 1:
            raise DataError(f"columns have different lengths: {lengths}", where=self.origin)

    @property
    def n_rows(self) -> int:
        return len(next(iter(self.columns.values()))) if self.columns else 0

    def column(self, name: str, *, field_path: str) -> np.ndarray:
        if name not in self.columns and name == self.split_column:
            raise DataError(f"column '{name}' named at {field_path} is the data's train/val/test split marker, "
                            "which is read as the split, not as a column", where=self.origin,
                            hint=f"rename the column '{name}' in the file to use it as data")
        if name not in self.columns:
            names = list(self.columns)
            raise DataError(
                f"column '{name}' named at {field_path} is not in the data{did_you_mean(name, names)}",
                where=self.origin,
                hint=f"columns that exist: {', '.join(names)}",
            )
        return self.columns[name]

    def take(self, rows: np.ndarray) -> "Table":
        split = self.split[rows] if self.split is not None else None
        return Table({k: v[rows] for k, v in self.columns.items()}, self.origin, split, list(self.notes), self.root,
                     self.split_column)

    @classmethod
    def from_frame(cls, frame, origin: str, split_column: str | None = "split") -> "Table":
        split = None
        if split_column and split_column in frame.columns:
            split = frame[split_column].astype(str).str.strip().str.lower().to_numpy()
            unknown = sorted(set(split) - {"train", "val", "test"})
            if unknown:
                raise DataError(
                    f"column '{split_column}' holds {unknown[:5]}; a split column may only hold train, val, test",
                    where=origin,
                    hint="rename the column if it is not a split marker",
                )
            frame = frame.drop(columns=[split_column])
        table = cls({str(c): frame[c].to_numpy() for c in frame.columns}, origin, split)
        if split is not None:
            counts = ", ".join(f"{part} {int((split == part).sum())}" for part in ("train", "val", "test")
                               if (split == part).any())
            table.split_column = split_column
            table.notes.append(f"column '{split_column}' is read as the data's own split ({counts}), not as data; "
                               "rename it in the file to use it as a column")
        return table
