"""Exact and near duplicates, within the data and across its splits (train rows whose twin is in val or test).

Each row gets two fingerprints over its input columns (the target is left out, so twins with different labels are
found and called conflicting):
- exact: the cells as written (image files: their bytes; image arrays: their pixels);
- near: text lowercased with punctuation and repeated spaces removed, numbers rounded to 6 significant digits, and
  images by perceptual hash (average hash and difference hash, 64 bits each, Pillow + numpy): two images are near
  twins when their hashes differ in at most `HASH_BITS` of the 128 bits — a re-encoded or resized copy.
Comparing hashes pair by pair is quadratic, so it runs in blocks up to `PAIRWISE_LIMIT` images; above that, only
rows with equal hashes are twins (said in the result).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from dlforge.audit.columns import missing_mask

# Of 128 (both hashes). On tuxpaint_photos a copy resized to 90% and re-encoded as JPEG q75 moved at most 4 bits,
# while the closest two distinct photos (an apricot and a peach-coloured apricot) differed in 7.
HASH_BITS = 5
# Then a check of the candidates that the 64-bit hashes cannot make on small images (8x8 digits are their own
# hash): the mean absolute difference of 16x16 grey thumbnails (0-255). Photo copies as above: at most 1.8;
# distinct photos: 7.8 and more; the 437 hash-twin pairs of distinct scikit-learn digits: 3.8 and more.
THUMB_DIFF = 3.0
PAIRWISE_LIMIT = 20_000
_PUNCT = re.compile(r"[^\w\s]+")
_SPACE = re.compile(r"\s+")


@dataclass
class Fingerprints:
    exact: np.ndarray  # (n,) uint64
    near: np.ndarray  # (n,) uint64
    hashes: np.ndarray | None = None  # (n, 2) uint64 perceptual hashes of the first image column, or None
    thumbs: np.ndarray | None = None  # (n, 16, 16) float32 grey thumbnails of the same images


def normalise_text(text: str) -> str:
    return _SPACE.sub(" ", _PUNCT.sub(" ", text.lower())).strip()


def _hash_strings(strings: pd.Series) -> np.ndarray:
    return pd.util.hash_pandas_object(strings, index=False).to_numpy(np.uint64)


MISSING = np.uint64(0x9E3779B97F4A7C15)  # the hash of a missing cell (any constant no string hashes to)


def _hash_cells(values: np.ndarray, kind: str, near: bool) -> np.ndarray:
    """(n,) uint64 per cell, by value, so that hashes of two tables (the data and planted copies) compare.

    Each distinct value is converted and normalised once (50,000 rows of a category column hold a few dozen)."""
    missing = missing_mask(values)
    if kind == "number" and near:
        from dlforge.audit.columns import as_numbers

        numbers = as_numbers(values)
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):  # inf/NaN cells: hashed as they are
            scale = 10.0 ** (np.floor(np.log10(np.abs(np.where(numbers == 0, 1.0, numbers)))) - 5)
            rounded = np.round(np.nan_to_num(numbers) / scale) * scale  # 6 significant digits
            rounded = np.where(np.isfinite(rounded), rounded, numbers)
        hashed = pd.util.hash_array(rounded.astype(np.float64))
    else:
        codes, uniques = pd.factorize(pd.Series(values, dtype=object), use_na_sentinel=True)
        text = [str(v) for v in uniques.tolist()]
        if near and kind in ("text", "category"):
            text = [normalise_text(t) for t in text]
        table = _hash_strings(pd.Series(text, dtype=object)) if text else np.zeros(0, dtype=np.uint64)
        hashed = table[np.maximum(codes, 0)] if len(table) else np.zeros(len(values), dtype=np.uint64)
    return np.where(missing, MISSING, hashed).astype(np.uint64)


HEAD_BYTES = 1 << 16


def _file_digest(path: str, root: str | None, whole: bool = True) -> str:
    """sha1 of the file's bytes, or (`whole` False) of its size and first 64 KiB: what train's cheap check reads,
    so that a folder of 100 GB of images is not read twice."""
    p = Path(path)
    p = p if p.is_absolute() or root is None else Path(root) / p
    try:
        if whole:
            return hashlib.sha1(p.read_bytes()).hexdigest()
        with open(p, "rb") as handle:
            return hashlib.sha1(str(p.stat().st_size).encode() + handle.read(HEAD_BYTES)).hexdigest()
    except OSError:
        return f"unreadable:{path}"


def grey_thumbnail(item, root: str | None, size: tuple[int, int]) -> np.ndarray:
    """One image (path or array) as a (h, w) float grey thumbnail of `size` (w, h)."""
    from PIL import Image

    from dlforge.data.images.decode import open_image

    if isinstance(item, np.ndarray):
        array = item if item.ndim == 2 else (item[..., 0] if item.shape[-1] == 1 else item.mean(-1))
        img = Image.fromarray(np.asarray(array, dtype=np.uint8))
        return np.asarray(img.resize(size, Image.Resampling.BILINEAR), dtype=np.float32)
    p = Path(str(item))
    p = p if p.is_absolute() or root is None else Path(root) / p
    try:
        with open_image(p) as img:
            if "A" in img.getbands() or img.mode == "P":  # transparency reads as white, as training decodes it
                rgba = img.convert("RGBA")
                img = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
            return np.asarray(img.convert("L").resize(size, Image.Resampling.BILINEAR), dtype=np.float32)
    except (OSError, ValueError):
        return np.full((size[1], size[0]), np.nan, dtype=np.float32)


def _pack(bits: np.ndarray) -> np.ndarray:
    """(n, 64) bool -> (n,) uint64."""
    return np.packbits(bits.astype(np.uint8), axis=1).view(">u8")[:, 0].astype(np.uint64)


def perceptual_hashes(images: np.ndarray, root: str | None = None) -> np.ndarray:
    """(n, 2) uint64: average hash (8x8 grey vs its mean) and difference hash (9x8 grey, each pixel vs its right
    neighbour) per image. An image that does not decode gets a hash of its own (random), so it twins with none."""
    n = len(images)
    small = np.stack([grey_thumbnail(images[i], root, (8, 8)) for i in range(n)]) if n else np.zeros((0, 8, 8))
    wide = np.stack([grey_thumbnail(images[i], root, (9, 8)) for i in range(n)]) if n else np.zeros((0, 8, 9))
    average = _pack((small > small.mean(axis=(1, 2), keepdims=True)).reshape(n, 64))
    difference = _pack((wide[:, :, 1:] > wide[:, :, :-1]).reshape(n, 64))
    broken = np.isnan(small).any(axis=(1, 2))
    if broken.any():
        rng = np.random.default_rng(len(images))
        average[broken] = rng.integers(0, 2**63, broken.sum(), dtype=np.uint64)
        difference[broken] = rng.integers(0, 2**63, broken.sum(), dtype=np.uint64)
    return np.stack([average, difference], axis=1)


def thumbnails(images: np.ndarray, root: str | None = None) -> np.ndarray:
    """(n, 16, 16) grey thumbnails (0-255) that confirm a pair of hash twins."""
    if not len(images):
        return np.zeros((0, 16, 16), dtype=np.float32)
    return np.stack([grey_thumbnail(images[i], root, (16, 16)) for i in range(len(images))])


def fingerprints(columns: dict[str, np.ndarray], kinds: dict[str, str], root: str | None = None, *,
                 perceptual: bool = True, exact: bool = True) -> Fingerprints:
    """Exact and near fingerprints of every row over these columns (images by content, not by name).

    `perceptual` False: no perceptual hashes, and image files are compared by size and first 64 KiB; `exact`
    False: near fingerprints only. Both False is train's cheap check."""
    n = len(next(iter(columns.values())))
    exact_parts, near_parts, hashes, thumbs = [], [], None, None
    for name, values in columns.items():
        kind = kinds[name]
        if kind == "image":
            if values.ndim == 1:
                digests = pd.Series([_file_digest(str(v), root, whole=perceptual) for v in values.tolist()],
                                    dtype=object)
            else:
                digests = pd.Series([hashlib.sha1(np.ascontiguousarray(v).tobytes()).hexdigest() for v in values],
                                    dtype=object)
            exact_parts.append(_hash_strings(digests))
            near_parts.append(_hash_strings(digests))
            if hashes is None and perceptual:
                hashes, thumbs = perceptual_hashes(values, root), thumbnails(values, root)
        elif values.ndim == 1:
            if exact:
                exact_parts.append(_hash_cells(values, kind, near=False))
            near_parts.append(_hash_cells(values, kind, near=True))
        else:
            flat = values.reshape(n, -1)
            digest = _hash_strings(pd.Series([hashlib.sha1(np.ascontiguousarray(r).tobytes()).hexdigest()
                                              for r in flat], dtype=object))
            exact_parts.append(digest)
            near_parts.append(digest)

    def combine(parts: list[np.ndarray]) -> np.ndarray:
        if not parts:
            return np.zeros(n, dtype=np.uint64)
        frame = pd.DataFrame({str(i): p for i, p in enumerate(parts)})
        return pd.util.hash_pandas_object(frame, index=False).to_numpy(np.uint64)

    return Fingerprints(combine(exact_parts), combine(near_parts), hashes, thumbs)


def _popcount(x: np.ndarray) -> np.ndarray:
    return np.unpackbits(x.view(np.uint8).reshape(*x.shape, 8), axis=-1).sum(-1)


def image_pairs(hashes: np.ndarray, thumbs: np.ndarray, *, bits: int = HASH_BITS) -> list[tuple[int, int]]:
    """(i, j), i < j, of images whose average and difference hashes differ in at most `bits` bits together and
    whose thumbnails differ by at most THUMB_DIFF on average."""
    n = len(hashes)
    if n > PAIRWISE_LIMIT:
        return []
    pairs = []
    block = max(1, 4_000_000 // max(n, 1))
    for start in range(0, n, block):
        rows = slice(start, min(start + block, n))
        a = _popcount(hashes[rows, None, 0] ^ hashes[None, :, 0])
        d = _popcount(hashes[rows, None, 1] ^ hashes[None, :, 1])
        i, j = np.nonzero(a + d <= bits)
        i = i + start
        keep = i < j
        pairs += list(zip(i[keep].tolist(), j[keep].tolist()))
    return [(i, j) for i, j in pairs if np.abs(thumbs[i] - thumbs[j]).mean() <= THUMB_DIFF]


def groups(keys: np.ndarray, pairs: list[tuple[int, int]] = ()) -> np.ndarray:
    """A group id per row: rows with equal keys, or linked by a pair, share one (union-find over the pairs)."""
    group = pd.factorize(keys)[0].astype(np.int64)
    if not len(pairs):
        return group
    parent = np.arange(group.max() + 1)

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for i, j in pairs:
        a, b = find(group[i]), find(group[j])
        if a != b:
            parent[max(a, b)] = min(a, b)
    roots = np.array([find(g) for g in range(len(parent))])
    return roots[group]


def duplicate_groups(group: np.ndarray) -> list[np.ndarray]:
    """Row indices of each group with two or more rows, largest first."""
    order = np.argsort(group, kind="stable")
    sorted_groups = group[order]
    bounds = np.flatnonzero(np.diff(sorted_groups)) + 1
    found = [rows for rows in np.split(order, bounds) if len(rows) > 1]
    return sorted(found, key=len, reverse=True)


def summarise(found: list[np.ndarray], labels: np.ndarray | None, *, examples: int = 20) -> dict:
    """Counts (groups, rows beyond the first of each group) and examples, with twins whose labels disagree."""
    conflicting = [g for g in found if labels is not None and len(set(labels[g].tolist())) > 1]
    return {"groups": len(found), "extra_rows": int(sum(len(g) - 1 for g in found)),
            "conflicting_labels": len(conflicting),
            "examples": [[int(r) for r in g[:10]] for g in found[:examples]]}


def cross_split(group: np.ndarray, split: np.ndarray) -> dict:
    """Rows of val/test with a twin in another split (train first): the rows whose score is not a held-out score."""
    frame = pd.DataFrame({"g": group, "s": split})
    spans = frame.groupby("g")["s"].nunique()
    shared = spans.index[spans > 1]
    mask = frame["g"].isin(shared).to_numpy()
    leaked: dict[str, int] = {}
    rows = []
    for _, members in frame[mask].groupby("g"):
        parts = set(members["s"])
        for row, part in zip(members.index, members["s"]):
            if part != "train" and ("train" in parts or part == "test"):
                others = sorted(parts - {part})
                leaked[f"{part}<->{others[0]}"] = leaked.get(f"{part}<->{others[0]}", 0) + 1
                rows.append(int(row))
    return {"rows": len(rows), "by_splits": leaked, "leaked_rows": sorted(rows),
            "involved_rows": np.flatnonzero(mask).tolist()}
