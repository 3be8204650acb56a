"""Decoding image files with Pillow, and turning uint8 image arrays into float (N, C, H, W) tensors.

`open_image` is the one way a file or bytes are opened (by `decode_image` here, and by the image-file
column's header check and decoder in files.py), so the decompression-bomb guard cannot be skipped.
"""

from __future__ import annotations

import functools
import io
import zlib
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dlforge.core.errors import DataError

# Decompression-bomb guard: refuse images with more pixels than this (Pillow warns at 89M).
MAX_PIXELS = 40_000_000

# `preprocessing.interpolation` → the Pillow filter (files, in PIL.Image.Resampling) and the torch mode (arrays).
# Pillow's NEAREST takes the pixel whose centre is nearest, which torch calls "nearest-exact"; torch's
# "nearest" is shifted by half a pixel and would not match decoded files.
INTERPOLATIONS: dict[str, tuple[str, str]] = {
    "bilinear": ("BILINEAR", "bilinear"),
    "bicubic": ("BICUBIC", "bicubic"),
    "nearest": ("NEAREST", "nearest-exact"),
}


def _interpolation(name: str, where: str | None) -> tuple[str, str]:
    if name not in INTERPOLATIONS:  # the recipe is checked; this guards a hand-edited model.json
        raise DataError(f"unknown interpolation {name!r}", where=where,
                        hint=f"use one of: {', '.join(INTERPOLATIONS)}")
    return INTERPOLATIONS[name]


def pil_resample(name: str, where: str | None = None):
    """The Pillow resample filter for an interpolation name."""
    from PIL import Image

    return getattr(Image.Resampling, _interpolation(name, where)[0])


class TooManyPixels(ValueError):
    """An image whose header announces more than MAX_PIXELS pixels (refused before any pixel is decoded)."""


# File signatures of the formats clients send most; Pillow would pick the same plugin, after probing its list.
_SIGNATURES = ((b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"))


def pillow_formats(item) -> list[str] | None:
    """The one Pillow format to try for image bytes with a PNG or JPEG signature (None: let Pillow probe). Opening a
    small image spends a third of its decode time probing plugins; the signature names the same plugin for free."""
    if isinstance(item, (bytes, bytearray)):
        for signature, name in _SIGNATURES:
            if item[:len(signature)] == signature:
                return [name]
    return None


# 8-bit PNG colour types (greyscale, RGB, grey + alpha, RGBA) → Pillow's mode, as PngImagePlugin opens them.
_PNG_MODES = {0: "L", 2: "RGB", 4: "LA", 6: "RGBA"}
# Chunks that do not change the pixels Pillow gives for those colour types (text, colour space, physical size, ...).
_PNG_ANCILLARY = frozenset({b"gAMA", b"cHRM", b"sRGB", b"iCCP", b"sBIT", b"pHYs", b"tEXt", b"zTXt", b"iTXt", b"tIME",
                            b"bKGD", b"tRNS", b"hIST", b"sPLT", b"eXIf"})


def png_raw(data) -> tuple[str, tuple[int, int], bytes] | None:
    """A plain PNG (8-bit grey/RGB/grey+alpha/RGBA, not interlaced, every chunk's CRC intact, nothing unusual) as
    (Pillow's mode, (width, height), its pixels row by row), decoded without Pillow's PNG plugin: its IDAT stream goes
    straight to Pillow's own zip decoder (PNG's unfiltering), the decoder PngImagePlugin uses, so the pixels are the
    same, for about a third of the time on a small image (MNIST: ~12 vs ~35 us). None for anything else, including
    more than MAX_PIXELS pixels: the caller then opens it with Pillow."""
    if len(data) < 45 or data[:16] != b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR":
        return None
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    mode = _PNG_MODES.get(data[25])
    if data[24] != 8 or mode is None or data[26:29] != b"\x00\x00\x00" or not 0 < width * height <= MAX_PIXELS:
        return None
    parts, pos, end = [], 8, len(data)
    while True:
        if pos + 12 > end:
            return None
        length = int.from_bytes(data[pos:pos + 4], "big")
        stop = pos + 8 + length
        if stop + 4 > end or zlib.crc32(data[pos + 4:stop]) != int.from_bytes(data[stop:stop + 4], "big"):
            return None
        kind = data[pos + 4:pos + 8]
        if kind == b"IDAT":
            parts.append(data[pos + 8:stop])
        elif kind == b"IEND":
            break
        elif parts or (kind != b"IHDR" and kind not in _PNG_ANCILLARY):
            return None  # a chunk between IDATs, or one that may change the pixels (a palette, an animation, ...)
        pos = stop + 4
    if not parts:
        return None
    try:
        return mode, (width, height), _zip_decode(mode, width, height, parts[0] if len(parts) == 1 else b"".join(parts))
    except ValueError:  # truncated or damaged pixel data: Pillow's plugin says what is wrong
        return None


@functools.cache
def _pillow_core():
    """Pillow's C core and its encoders' block size (imported once: an import statement per image costs ~1 us)."""
    from PIL import Image, ImageFile

    return Image.core, ImageFile.MAXBLOCK


def _zip_decode(mode: str, width: int, height: int, stream: bytes) -> bytes:
    """`Image.frombytes(mode, size, stream, "zip", mode).tobytes()` made of the same calls into Pillow's C core (its zip
    decoder into a new image, read back by its raw encoder) without the Image objects around them: 8 of ~23 us for
    an MNIST PNG. If this Pillow's core lacks a call, the Image way."""
    core, maxblock = _pillow_core()
    try:
        im = core.new(mode, (width, height))
        decoder = core.zip_decoder(mode, mode)
    except AttributeError:  # pragma: no cover - another Pillow
        from PIL import Image

        return Image.frombytes(mode, (width, height), stream, "zip", mode).tobytes()
    decoder.setimage(im, (0, 0, width, height))
    consumed, error = decoder.decode(stream)
    if consumed >= 0 or error != 0:  # as Image.frombytes: short, or damaged, pixel data
        raise ValueError("cannot decode image data")
    encoder = core.raw_encoder(mode, mode)
    encoder.setimage(im, (0, 0, width, height))
    bufsize, out = max(maxblock, width * 4), []  # as Image.tobytes
    try:
        while True:
            _, error, chunk = encoder.encode(bufsize)
            out.append(chunk)
            if error:
                break
    finally:
        encoder.cleanup()
    if error < 0:
        raise ValueError(f"encoder error {error}")
    return out[0] if len(out) == 1 else b"".join(out)


def png_image(data):
    """`png_raw` as a Pillow image (None when png_raw gives None)."""
    from PIL import Image

    decoded = png_raw(data)
    return None if decoded is None else Image.frombytes(*decoded)


@contextmanager
def open_image(item):
    """Pillow's image for a path or bytes, refused (TooManyPixels) when its header has more than MAX_PIXELS pixels.
    Pillow reads only the header here; pixels are decoded on first use."""
    from PIL import Image

    source = io.BytesIO(item) if isinstance(item, (bytes, bytearray)) else Path(str(item))
    with Image.open(source, formats=pillow_formats(item)) as img:
        if img.width * img.height > MAX_PIXELS:
            raise TooManyPixels(f"image of {img.width}x{img.height} pixels exceeds the limit of {MAX_PIXELS}")
        yield img


def decode_image(item, *, channels: int | None, size: tuple[int, int] | None, where: str,
                 interpolation: str = "bilinear") -> np.ndarray:
    """One image (path, bytes or array) as uint8 (H, W, C), converted to `channels` and resized to `size`."""
    from PIL import UnidentifiedImageError

    if isinstance(item, np.ndarray):
        return item
    try:
        with open_image(item) as img:
            mode = {1: "L", 3: "RGB"}.get(channels or 0) or ("L" if img.mode in ("L", "1", "I;16") else "RGB")
            img = img.convert(mode)
            if size is not None and (img.height, img.width) != tuple(size):
                img = img.resize((size[1], size[0]), pil_resample(interpolation, where))
            array = np.asarray(img, dtype=np.uint8)
    except FileNotFoundError:
        raise DataError(f"image file not found: {item}", where=where) from None
    except TooManyPixels as exc:
        raise DataError(str(exc), where=where, hint="shrink the image, or remove it") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"cannot decode image {str(item)[:200]}: {exc}", where=where,
                        hint="check the file, or remove it") from None
    return array if array.ndim == 3 else array[:, :, None]


def to_nchw(images: np.ndarray) -> torch.Tensor:
    """uint8/float (N, H, W) or (N, H, W, C) as float32 (N, C, H, W), values unchanged."""
    tensor = torch.from_numpy(np.ascontiguousarray(images))
    if tensor.ndim == 3:
        tensor = tensor.unsqueeze(1)
    elif tensor.ndim == 4 and tensor.shape[-1] in (1, 3, 4) and tensor.shape[1] not in (1, 3, 4):
        tensor = tensor.permute(0, 3, 1, 2)
    else:
        raise DataError(f"image arrays must be (N, H, W) or (N, H, W, C); got shape {tuple(images.shape)}")
    return tensor.float().contiguous()


def convert_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """(N, C, H, W) to `channels`: grey→RGB repeats, RGB→grey uses ITU-R 601 luma, alpha is dropped."""
    have = x.shape[1]
    if have == 4:
        x, have = x[:, :3], 3
    if have == channels:
        return x
    if have == 1 and channels == 3:
        return x.expand(-1, 3, -1, -1).contiguous()
    if have == 3 and channels == 1:
        weights = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype).view(1, 3, 1, 1)
        return (x * weights).sum(1, keepdim=True)
    raise DataError(f"cannot convert {have}-channel images to {channels} channels")


def resize(x: torch.Tensor, size: tuple[int, int], interpolation: str = "bilinear") -> torch.Tensor:
    """(N, C, H, W) float to `size`. Antialiased like Pillow when shrinking; float bicubic may overshoot the
    input's range (as torchvision on float tensors), where Pillow clamps to 0..255."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    mode = _interpolation(interpolation, None)[1]
    if mode == "nearest-exact":  # torch antialiases only the bilinear/bicubic kernels
        return F.interpolate(x, size=tuple(size), mode=mode)
    return F.interpolate(x, size=tuple(size), mode=mode, antialias=True, align_corners=False)
