"""Pretrained-backbone geometry: resize the shorter side, then centre-crop (the ImageNet evaluation protocol).

Done with Pillow at decode time (once per image, before training), so the hot loop only sees
ready (N, 3, crop, crop) tensors. ImageNet statistics live here too: they are the input scale that
ImageNet-pretrained weights expect.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from dlforge.errors import DataError

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def open_rgb(item, *, where: str):
    """A PIL RGB image from a path, bytes or uint8 array. Greyscale is repeated to 3 channels; alpha is
    composited onto white (a transparent background reads as white, not as black)."""
    from PIL import Image, UnidentifiedImageError

    from dlforge.data.images import MAX_PIXELS

    try:
        if isinstance(item, np.ndarray):
            array = item if item.ndim == 3 else item[:, :, None]
            array = np.repeat(array, 3, axis=2) if array.shape[2] == 1 else array
            img = Image.fromarray(np.ascontiguousarray(array[:, :, :4]).astype(np.uint8))
        else:
            source = io.BytesIO(item) if isinstance(item, (bytes, bytearray)) else Path(str(item))
            img = Image.open(source)
            if img.width * img.height > MAX_PIXELS:
                raise DataError(f"image of {img.width}x{img.height} pixels exceeds the limit of {MAX_PIXELS}", where=where)
            img.load()
        if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
            rgba = img.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            img = Image.alpha_composite(background, rgba)
        return img.convert("RGB")
    except FileNotFoundError:
        raise DataError(f"image file not found: {item}", where=where) from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DataError(f"cannot decode image {str(item)[:200]}: {exc}", where=where,
                        hint="check the file, or remove it from the data") from None


def resize_crop(img, *, shorter: int | None, crop: tuple[int, int]) -> tuple[np.ndarray, bool]:
    """uint8 (crop_h, crop_w, 3), and whether the image had to be enlarged (it was smaller than the crop).

    An image smaller than the crop is scaled up (never padded), as torchvision's Resize+CenterCrop does.
    """
    from PIL import Image

    crop_h, crop_w = crop
    small = img.width < crop_w or img.height < crop_h
    target = shorter if shorter is not None else max(crop_h, crop_w)
    if shorter is not None or small:
        scale = target / min(img.width, img.height)
        if shorter is None:  # only enlarge as much as needed to cover the crop
            scale = max(crop_w / img.width, crop_h / img.height)
        size = (max(crop_w, round(img.width * scale)), max(crop_h, round(img.height * scale)))
        img = img.resize(size, Image.BILINEAR, reducing_gap=None)
    left, top = (img.width - crop_w) // 2, (img.height - crop_h) // 2
    img = img.crop((left, top, left + crop_w, top + crop_h))
    return np.asarray(img, dtype=np.uint8), small


def decode_resize_crop(values, *, shorter: int | None, crop: tuple[int, int], field: str) -> tuple[np.ndarray, int]:
    """(N, crop_h, crop_w, 3) uint8 for a column of paths/bytes/arrays, and how many images were enlarged."""
    out = np.empty((len(values), crop[0], crop[1], 3), dtype=np.uint8)
    enlarged = 0
    for i, item in enumerate(values):
        out[i], small = resize_crop(open_rgb(item, where=f"{field} row {i}"), shorter=shorter, crop=crop)
        enlarged += small
    return out, enlarged
