"""Built-in dataset names (`builtin:mnist`): where each one lives under $DLFORGE_DATA; `digits` ships inside dlforge.

A built-in name resolves to a location (a file or folder that `data.readers` reads like any user path) or, for
`digits`, to a Table. This module never reads a file format itself, so it imports nothing from `data.readers`:
`readers.load_table` asks it where a name lives, and the dependency runs one way.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from dlforge.core.errors import DataError, did_you_mean
from dlforge.core.registry import Registry
from dlforge.data.table import Table

datasets: Registry[Callable[[], Path | Table]] = Registry("built-in dataset")

# scikit-learn's `load_digits()` (images 0..16 and targets as uint8, identical values), saved once with
# np.savez_compressed: 45 KB here instead of scikit-learn + scipy (~194 MB) in every core install.
DIGITS_NPZ = Path(__file__).with_name("digits.npz")


def data_root() -> Path:
    return Path(os.environ.get("DLFORGE_DATA", "~/.cache/dlforge/data")).expanduser()


def _require(relative: str, name: str) -> Path:
    path = data_root() / relative
    if not path.exists():
        raise DataError(
            f"built-in dataset '{name}' needs {path}, which does not exist",
            where=f"builtin:{name}",
            hint=f"put the file at {path}, or point DLFORGE_DATA at the folder that holds {relative.split('/')[0]}/ "
            "(e.g. export DLFORGE_DATA=$PWD/../shared/data)",
        )
    return path


@datasets.register("digits")
def digits() -> Table:
    """scikit-learn's 1,797 8x8 handwritten digits (values 0-16), from the npz shipped inside dlforge."""
    with np.load(DIGITS_NPZ, allow_pickle=False) as archive:
        images, target = archive["images"], archive["target"]
    # Rescale 0..16 to 0..255 so image preprocessing treats it like any 8-bit image.
    images = (images.astype(np.float64) * (255.0 / 16.0)).round().astype(np.uint8)
    return Table({"image": images, "label": target.astype(np.int64)}, "builtin:digits")


def _at(name: str, relative: str) -> Callable[[], Path]:
    def locate() -> Path:
        return _require(relative, name)

    return locate


datasets.register("mnist")(_at("mnist", "mnist/mnist.npz"))
datasets.register("fashion_mnist")(_at("fashion_mnist", "fashion_mnist/fashion_mnist.npz"))
datasets.register("adult")(_at("adult", "adult"))
datasets.register("german_credit")(_at("german_credit", "german_credit/german_credit.csv"))
datasets.register("compas")(_at("compas", "compas/compas.csv.gz"))
datasets.register("lending_club")(_at("lending_club", "lending_club/lending_club.csv"))
datasets.register("rt_snippets")(_at("rt_snippets", "rt_snippets"))
datasets.register("spam_assassin")(_at("spam_assassin", "spam_assassin"))
# Spoken digits (FSDD) as MFCC sequences, UCR/UEA layout: (n, 13, 92) NaN right-padded, official 80/20 split.
datasets.register("fsdd_mfcc")(_at("fsdd_mfcc", "fsdd_mfcc/fsdd_mfcc.npz"))
# 776 sound clips (16 kHz WAV) in 16 classes as train/<class>/*.wav + test/<class>/*.wav, with labels.csv.
datasets.register("sfx_0ad")(_at("sfx_0ad", "sfx_0ad"))
# MovieLens 100K (research use only; never shipped): ratings with a leave-last-out split column; side tables and
# the sampled protocol's negatives as builtin:movielens_100k/items.csv.gz, users.csv.gz, test_negatives.csv.gz.
datasets.register("movielens_100k")(_at("movielens_100k", "movielens_100k/ratings.csv.gz"))
# 187 RGB photos in 6 classes as a train/<class>/*.jpg + test/<class>/*.jpg tree.
datasets.register("tuxpaint_photos")(_at("tuxpaint_photos", "tuxpaint_photos"))


def ucr_uea(name: str) -> Path:
    """`ucr_uea/GunPoint`: one archive set at $DLFORGE_DATA/ucr_uea/<name>.npz (official train/test split)."""
    folder = data_root() / "ucr_uea"
    path = folder / f"{name}.npz"
    if not path.is_file():
        known = sorted(p.stem for p in folder.glob("*.npz")) if folder.is_dir() else []
        raise DataError(f"built-in dataset 'ucr_uea/{name}' needs {path}, which does not exist{did_you_mean(name, known)}",
                        where="data.source", hint=f"sets found: {', '.join(known) or 'none'} (DLFORGE_DATA={data_root()})")
    return path


def locate_builtin(name: str) -> Path | Table:
    """Where `builtin:<name>` lives (a path to read as any user path), or the Table itself for `digits`."""
    if name.startswith("ucr_uea/"):
        return ucr_uea(name.split("/", 1)[1])
    if "/" in name:  # a file inside a built-in folder, e.g. builtin:tuxpaint_photos/labels.csv
        return _require(name, name.split("/")[0])
    try:
        locate = datasets.get(name)
    except Exception as exc:
        raise DataError(str(exc), where="data.source") from None
    return locate()
