"""Image- and sound-folder trees as Keras' `flow_from_directory` reads them: `[train|val|test/]<class>/<file>`.

The result is a Table with an `image` (or `audio`) column of file paths and a `label` column of folder names,
plus the official split when the tree has train/ (and val/, test/) folders. Decoding happens later
(`data/images/files.py`, `data/features/audio.py`), so a folder of any size is listed in a second.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dlforge.data.audio import AUDIO_SUFFIXES
from dlforge.data.table import Table
from dlforge.core.errors import DataError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
SPLITS = ("train", "val", "test")


def _class_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


MEDIA = {"image": IMAGE_SUFFIXES, "audio": AUDIO_SUFFIXES}


def folder_media(folder: Path) -> str | None:
    """"image" or "audio" when `folder` holds train/<class>/ or <class>/ folders with such files (not CSV splits)."""
    roots = [folder / "train"] if (folder / "train").is_dir() else [folder]
    for root in roots:
        for class_dir in _class_dirs(root):
            suffixes = {p.suffix.lower() for p in class_dir.iterdir()}
            for media, known in MEDIA.items():
                if suffixes & known:
                    return media
    return None


def is_image_folder(folder: Path) -> bool:
    """True when `folder` is a class-folder tree of image or sound files (the name predates sound)."""
    return folder_media(folder) is not None


def _list(root: Path, suffixes: set[str]) -> tuple[list[str], list[str], list[str]]:
    """(paths, labels, ignored) of one split folder; ignored are other files (reported, not silently lost)."""
    paths, labels, ignored = [], [], []
    for class_dir in _class_dirs(root):
        for file in sorted(class_dir.iterdir()):
            if file.is_file() and file.suffix.lower() in suffixes:
                paths.append(str(file.resolve()))
                labels.append(class_dir.name)
            elif file.is_file() and not file.name.startswith("."):
                ignored.append(str(file))
    return paths, labels, ignored


def read_image_folder(folder: Path) -> Table:
    folder = Path(folder)
    media = folder_media(folder) or "image"
    suffixes = MEDIA[media]
    parts = [p for p in SPLITS if (folder / p).is_dir()]
    roots = {p: folder / p for p in parts} if "train" in parts else {None: folder}
    paths, labels, split, ignored = [], [], [], []
    for part, root in roots.items():
        p, lab, ign = _list(root, suffixes)
        if part is not None and not p:
            raise DataError(f"the {part}/ folder has no <class>/<{media}> files", where=str(root),
                            hint=f"put the files in {root}/<class name>/, e.g. {root}/cat/001.jpg")
        paths += p
        labels += lab
        split += [part] * len(p)
        ignored += ign
    if not paths:
        raise DataError("no image files found in <class>/ folders", where=str(folder),
                        hint="lay the folder out as train/<class>/*.jpg [test/<class>/*.jpg] or <class>/*.jpg "
                             f"(suffixes: {', '.join(sorted(IMAGE_SUFFIXES))})")
    classes = sorted(set(labels))
    if len(classes) < 2:
        raise DataError(f"only one class folder ({classes[0]}) holds images; a classifier needs two or more",
                        where=str(folder), hint="add a folder per class")
    table = Table({media: np.array(paths, dtype=object), "label": np.array(labels, dtype=object)}, str(folder),
                  np.array(split, dtype=object) if "train" in parts else None, root=str(folder.resolve()))
    if ignored:
        table.notes.append(f"{len(ignored)} non-{media} file(s) ignored, e.g. {ignored[0]}")
    return table
