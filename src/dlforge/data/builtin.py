"""Built-in dataset names (`builtin:mnist`), resolved under $DLFORGE_DATA; `digits` needs no files."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np

from dlforge.data.readers import read_csv, read_npz, read_split_folder
from dlforge.data.table import Table
from dlforge.core.errors import DataError
from dlforge.core.registry import Registry

datasets: Registry[Callable[[], Table]] = Registry("built-in dataset")


def data_root() -> Path:
    return Path(os.environ.get("DLFORGE_DATA", "~/.cache/dlforge/data")).expanduser()


def _require(relative: str, name: str) -> Path:
    path = data_root() / relative
    if not path.exists():
        raise DataError(
            f"built-in dataset '{name}' needs {path}, which does not exist",
            where=f"builtin:{name}",
            hint=f"put the file at {path}, or point DLFORGE_DATA at the folder that holds {relative.split('/')[0]}/ "
            "(e.g. export DLFORGE_DATA=../shared/data)",
        )
    return path


@datasets.register("digits")
def digits() -> Table:
    """scikit-learn's 1,797 8x8 handwritten digits (values 0-16), shipped inside scikit-learn."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    # Rescale 0..16 to 0..255 so image preprocessing treats it like any 8-bit image.
    images = (bunch.images * (255.0 / 16.0)).round().astype(np.uint8)
    return Table({"image": images, "label": bunch.target.astype(np.int64)}, "builtin:digits")


def _npz(name: str) -> Callable[[], Table]:
    def load() -> Table:
        table = read_npz(_require(f"{name}/{name}.npz", name))
        table.origin = f"builtin:{name}"
        return table

    return load


def _csv_with_split(name: str, filename: str) -> Callable[[], Table]:
    def load() -> Table:
        table = read_csv(_require(f"{name}/{filename}", name))
        table.origin = f"builtin:{name}"
        return table

    return load


def _folder(name: str) -> Callable[[], Table]:
    def load() -> Table:
        table = read_split_folder(_require(name, name))
        table.origin = f"builtin:{name}"
        return table

    return load


datasets.register("mnist")(_npz("mnist"))
datasets.register("fashion_mnist")(_npz("fashion_mnist"))
datasets.register("adult")(_folder("adult"))
datasets.register("german_credit")(_csv_with_split("german_credit", "german_credit.csv"))
datasets.register("compas")(_csv_with_split("compas", "compas.csv.gz"))
datasets.register("lending_club")(_csv_with_split("lending_club", "lending_club.csv"))
datasets.register("rt_snippets")(_folder("rt_snippets"))
datasets.register("spam_assassin")(_folder("spam_assassin"))


@datasets.register("tuxpaint_photos")
def tuxpaint_photos() -> Table:
    """187 RGB photos in 6 classes as a train/<class>/*.jpg + test/<class>/*.jpg tree."""
    from dlforge.data.images.folder import read_image_folder

    table = read_image_folder(_require("tuxpaint_photos/train", "tuxpaint_photos").parent)
    table.origin = "builtin:tuxpaint_photos"
    return table


def ucr_uea(name: str) -> Table:
    """`ucr_uea/GunPoint`: one archive set from $DLFORGE_DATA/ucr_uea/<name>.npz (official train/test split)."""
    folder = data_root() / "ucr_uea"
    path = folder / f"{name}.npz"
    if not path.is_file():
        known = sorted(p.stem for p in folder.glob("*.npz")) if folder.is_dir() else []
        from dlforge.core.errors import did_you_mean

        raise DataError(f"built-in dataset 'ucr_uea/{name}' needs {path}, which does not exist{did_you_mean(name, known)}",
                        where="data.source", hint=f"sets found: {', '.join(known) or 'none'} (DLFORGE_DATA={data_root()})")
    table = read_npz(path)
    table.origin = f"builtin:ucr_uea/{name}"
    return table


def load_builtin(name: str) -> Table:
    if name.startswith("ucr_uea/"):
        return ucr_uea(name.split("/", 1)[1])
    if "/" in name:  # a file inside a built-in folder, e.g. builtin:tuxpaint_photos/labels.csv
        from dlforge.data.readers import load_table

        table = load_table(str(_require(name, name.split("/")[0])))
        table.origin = f"builtin:{name}"
        return table
    try:
        loader = datasets.get(name)
    except Exception as exc:
        raise DataError(str(exc), where="data.source") from None
    return loader()
