"""Image *files* in a column (paths from an image folder or a CSV): check, decode, and choose memory vs streaming.

Before the split, every file's header is read (cheap: Pillow reads only the header), so that a file
that does not open fails naming it (`on_bad_file: error`) or drops its row with a count (`skip`),
and so that mixed greyscale/RGBA/RGB sets get one channel count. Then either every image is decoded
once to a uint8 (N, H, W, C) array that replaces the column (the in-memory fast path), or the column
stays as paths for the streaming path (`data/streaming.py`) when the decoded tensors would not fit
`data.memory_budget_mb` or `data.in_memory` is false.
"""

from __future__ import annotations

from collections import Counter
from contextlib import nullcontext
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dlforge.data.features.base import is_missing
from dlforge.data.images.decode import TooManyPixels, open_image, pil_resample, png_image
from dlforge.data.table import Table
from dlforge.core.errors import DataError
from dlforge.data.limits import check_fits

GREY_MODES = {"L", "1", "I;16", "I", "F", "LA"}


@dataclass
class ImagePlan:
    """How one image column is delivered: decoded size/channels and whether it streams."""

    name: str
    channels: int
    size: tuple[int, int]
    fit: str
    stream: bool
    shorter: int | None = None  # fit crop: scale the shorter side to this first (ImageNet's 256 → 224)
    interpolation: str = "bilinear"  # the resample filter of every resize above (preprocessing.interpolation)


def is_file_column(values: np.ndarray) -> bool:
    return values.dtype == object or values.dtype.kind in "US"


def resolve_paths(values: np.ndarray, root: str | None) -> np.ndarray:
    """Relative paths become absolute against the table's root (the CSV's folder), as a user reads them."""
    base = Path(root) if root else Path.cwd()
    out = np.empty(len(values), dtype=object)
    for i, v in enumerate(values.tolist()):
        if isinstance(v, (bytes, bytearray)) or is_missing(v):
            out[i] = v
        else:
            path = Path(str(v).strip()).expanduser()
            out[i] = str(path if path.is_absolute() else base / path)
    return out


def fit_image(img, size: tuple[int, int] | None, fit: str, shorter: int | None = None,
              interpolation: str = "bilinear"):
    """Resize a PIL image to (height, width) by stretching, centre-cropping or padding."""
    from PIL import ImageOps

    if size is None or (img.height, img.width) == tuple(size):
        return img
    height, width = size
    resample = pil_resample(interpolation)
    if fit == "crop" and shorter:
        # The ImageNet evaluation protocol: shorter side to `shorter`, then a centre crop of `size`.
        # An image smaller than the crop is enlarged to cover it (never padded).
        scale = max(shorter / min(img.width, img.height), width / img.width, height / img.height)
        img = img.resize((max(width, round(img.width * scale)), max(height, round(img.height * scale))),
                         resample)
        left, top = (img.width - width) // 2, (img.height - height) // 2
        return img.crop((left, top, left + width, top + height))
    if fit == "crop":
        return ImageOps.fit(img, (width, height), resample)
    if fit == "pad":
        fill = 255 if img.mode == "L" else (255, 255, 255)
        return ImageOps.pad(img, (width, height), resample, color=fill)
    return img.resize((width, height), resample)


def decode_file(item, *, channels: int, size: tuple[int, int] | None, fit: str, shorter: int | None = None,
                interpolation: str = "bilinear") -> np.ndarray:
    """One image file (or bytes) as uint8 (H, W, C). Raises OSError/ValueError when it does not decode, and
    TooManyPixels (a ValueError) past the pixel limit."""
    from PIL import Image

    decoded = png_image(item) if isinstance(item, (bytes, bytearray)) else None  # a plain PNG: the short way
    with nullcontext(decoded) if decoded is not None else open_image(item) as img:
        # RGBA/P/CMYK/16-bit all become 8-bit L or RGB; alpha is dropped (composited onto nothing).
        if "A" in img.getbands() or (img.mode == "P" and "transparency" in img.info):
            # Transparent pixels read as white (a cut-out on paper), not as whatever RGB they hide (often black).
            rgba = img.convert("RGBA")
            img = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
        mode = "L" if channels == 1 else "RGB"
        img = img.convert(mode) if img.mode != mode else img  # convert() to its own mode only copies
        array = np.asarray(fit_image(img, size, fit, shorter, interpolation), dtype=np.uint8)
    return array if array.ndim == 3 else array[:, :, None]


def _header(item) -> tuple[str, int, int] | str:
    """(mode, width, height) of a file, or the reason it cannot be opened."""
    if is_missing(item):
        return "missing path"
    try:
        with open_image(item) as img:
            return img.mode, img.width, img.height
    except FileNotFoundError:
        return "file not found"
    except TooManyPixels as exc:
        return str(exc)
    except Exception as exc:  # Pillow raises UnidentifiedImageError, OSError, SyntaxError, ValueError...
        return f"cannot decode ({type(exc).__name__}: {str(exc)[:120]})"


def _drop_bad(table: Table, name: str, values: np.ndarray, headers: list, config, field_path: str, report: dict):
    bad = np.array([isinstance(h, str) for h in headers])
    if not bad.any():
        return table, values, headers
    first = int(np.flatnonzero(bad)[0])
    if config.preprocessing.on_bad_file == "error":
        raise DataError(f"image {values[first]} (row {first}): {headers[first]}; {int(bad.sum())} bad file(s) in all",
                        where=f"{field_path}.preprocessing.on_bad_file",
                        hint="fix or remove the file, or set on_bad_file: skip to drop such rows (they are counted)")
    report["skipped_bad_files"] = int(bad.sum())
    report["skipped_examples"] = [str(values[i]) for i in np.flatnonzero(bad)[:3]]
    keep = np.flatnonzero(~bad)
    return table.take(keep), values[keep], [headers[i] for i in keep]


def _decode_all(values: np.ndarray, plan: ImagePlan, workers: int, field_path: str, skip: bool):
    """uint8 (N, H, W, C) and the rows that failed a full decode (truncated files pass the header check)."""
    def one(item):
        try:
            return decode_file(item, channels=plan.channels, size=plan.size, fit=plan.fit, shorter=plan.shorter,
                               interpolation=plan.interpolation)
        except Exception as exc:  # a truncated JPEG fails only here
            return f"{type(exc).__name__}: {str(exc)[:120]}"

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        decoded = list(pool.map(one, values.tolist(), chunksize=64))
    failed = [i for i, d in enumerate(decoded) if isinstance(d, str)]
    if failed and not skip:
        raise DataError(f"image {values[failed[0]]} (row {failed[0]}) does not decode: {decoded[failed[0]]}",
                        where=f"{field_path}.preprocessing.on_bad_file",
                        hint="fix or remove the file, or set on_bad_file: skip")
    good = [d for d in decoded if not isinstance(d, str)]
    array = np.stack(good) if good else np.zeros((0, *plan.size, plan.channels), np.uint8)
    return array, failed


def prepare_image_files(recipe, table: Table) -> tuple[Table, dict[str, ImagePlan], dict]:
    """Check and (in memory) decode every image-file column of the recipe; returns the new table, plans, report."""
    plans: dict[str, ImagePlan] = {}
    reports: dict[str, dict] = {}
    data = recipe.data
    for i, feature in enumerate(recipe.inputs):
        if feature.type != "image" or not is_file_column(table.columns[feature.name]):
            continue
        field_path = f"inputs.{i}"
        prep = feature.preprocessing
        report: dict = {}
        values = resolve_paths(table.columns[feature.name], table.root)
        table.columns[feature.name] = values
        with ThreadPoolExecutor(max_workers=max(1, data.workers)) as pool:
            headers = list(pool.map(_header, values.tolist(), chunksize=64))
        table, values, headers = _drop_bad(table, feature.name, values, headers, feature, field_path, report)
        if table.n_rows == 0:
            raise DataError(f"no image in '{feature.name}' could be opened", where=field_path)
        modes = Counter("grey" if h[0] in GREY_MODES else ("rgba" if "A" in h[0] else "rgb") for h in headers)
        channels = prep.channels or (1 if set(modes) == {"grey"} else 3)
        converted = sum(c for m, c in modes.items() if m != ("grey" if channels == 1 else "rgb"))
        if converted:
            report["converted_to_" + ("grey" if channels == 1 else "rgb")] = int(converted)
            report["modes_seen"] = dict(modes)
        size = tuple(prep.size) if prep.size else None
        if size is None:
            sizes = Counter((h[2], h[1]) for h in headers)
            if len(sizes) > 1:
                common = sizes.most_common(2)
                raise DataError(f"images in '{feature.name}' have different sizes (e.g. {common[0][0]} and "
                                f"{common[1][0]} as height x width, {len(sizes)} sizes in all)",
                                where=f"{field_path}.preprocessing.size",
                                hint="set preprocessing.size: [height, width] (and fit: stretch|crop|pad)")
            size = next(iter(sizes))
        float_mb = table.n_rows * channels * size[0] * size[1] * 4 / 2**20
        stream = (not data.in_memory) if data.in_memory != "auto" else float_mb > data.memory_budget_mb
        shorter = prep.resize_shorter if prep.fit == "crop" else None
        plan = ImagePlan(feature.name, channels, size, prep.fit, stream, shorter, prep.interpolation)
        smaller = sum(1 for h in headers if h[1] < size[1] or h[2] < size[0])
        if smaller:
            report["enlarged_smaller_than_size"] = int(smaller)
        report["path"] = "streaming" if stream else "in_memory"
        report["decoded_float_mb"] = round(float_mb, 1)
        if not stream:
            check_fits(float_mb * 2**20, what=f"decoding {table.n_rows} image files into memory",
                       where=f"{field_path}.preprocessing.size",
                       hint="set data.in_memory: auto or false (streaming), or choose a smaller size")
            array, failed = _decode_all(values, plan, data.workers, field_path, prep.on_bad_file == "skip")
            if failed:
                report["skipped_bad_files"] = report.get("skipped_bad_files", 0) + len(failed)
                report["skipped_examples"] = (report.get("skipped_examples", []) + [str(values[i]) for i in failed])[:3]
                table = table.take(np.setdiff1d(np.arange(table.n_rows), failed))
            table.columns[feature.name] = array
        plans[feature.name] = plan
        reports[feature.name] = report
    return table, plans, reports
