"""Plain PNG bytes decode without Pillow's PNG plugin (png_image) to exactly Pillow's pixels; anything unusual is
left to Pillow; an image column of bytes decodes to the same tensor as the same images given as files."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from dlforge.data.images.decode import MAX_PIXELS, png_image
from dlforge.data.images.files import decode_file

RNG = np.random.default_rng(7)


def encoded(array: np.ndarray, mode: str | None = None, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array, mode).save(buffer, format="PNG", **options)
    return buffer.getvalue()


def pillow(data: bytes) -> tuple[str, np.ndarray]:
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        return img.mode, np.asarray(img)


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


@pytest.mark.parametrize("mode, shape", [("L", (28, 28)), ("L", (5, 64)), ("RGB", (37, 41, 3)),
                                         ("RGBA", (20, 30, 4)), ("LA", (9, 9, 2))])
@pytest.mark.parametrize("options", [{}, {"optimize": True}, {"compress_level": 0}, {"compress_level": 9}])
def test_plain_pngs_decode_to_pillows_pixels(mode, shape, options):
    array = RNG.integers(0, 256, shape, dtype=np.uint8)
    array[shape[0] // 2:] //= 7  # smooth rows too, so the encoder picks several row filters
    data = encoded(array, mode, **options)
    img = png_image(data)
    assert img is not None
    assert (img.mode, img.size) == (pillow(data)[0], (shape[1], shape[0]))
    np.testing.assert_array_equal(np.asarray(img), pillow(data)[1])
    np.testing.assert_array_equal(np.asarray(img), array)


def test_anything_unusual_is_left_to_pillow():
    grey = RNG.integers(0, 256, (10, 10), dtype=np.uint8)
    plain = encoded(grey)
    assert png_image(plain) is not None
    buffer = io.BytesIO()
    Image.fromarray(grey).convert("P").save(buffer, format="PNG")
    assert png_image(buffer.getvalue()) is None                          # a palette
    assert png_image(encoded(grey.astype(np.uint16) * 200)) is None       # 16 bits
    damaged = bytearray(plain)
    damaged[-20] ^= 0xFF
    assert png_image(bytes(damaged)) is None                             # a chunk's CRC does not match
    assert png_image(plain[:-30]) is None                                # truncated
    assert png_image(b"GIF89a" + plain[6:]) is None                      # not a PNG
    # An IDAT split in two with another chunk between them: not plain (Pillow decides what that means).
    ihdr = chunk(b"IHDR", struct.pack(">IIBBBBB", 10, 10, 8, 0, 0, 0, 0))
    stream = zlib.compress(b"".join(b"\x00" + row.tobytes() for row in grey))
    parts = [stream[:20], stream[20:]]
    sig = b"\x89PNG\r\n\x1a\n"
    split = sig + ihdr + chunk(b"IDAT", parts[0]) + chunk(b"IDAT", parts[1]) + chunk(b"IEND", b"")
    np.testing.assert_array_equal(np.asarray(png_image(split)), grey)  # consecutive IDATs are fine
    between = sig + ihdr + chunk(b"IDAT", parts[0]) + chunk(b"tEXt", b"a\x00b") + chunk(b"IDAT", parts[1]) \
        + chunk(b"IEND", b"")
    assert png_image(between) is None
    unknown = sig + ihdr + chunk(b"acTL", b"\x00" * 8) + chunk(b"IDAT", stream) + chunk(b"IEND", b"")
    assert png_image(unknown) is None                                    # an animation (APNG)
    interlaced = sig + chunk(b"IHDR", struct.pack(">IIBBBBB", 10, 10, 8, 0, 0, 0, 1)) + chunk(b"IDAT", stream) \
        + chunk(b"IEND", b"")
    assert png_image(interlaced) is None
    huge = sig + chunk(b"IHDR", struct.pack(">IIBBBBB", MAX_PIXELS, 2, 8, 0, 0, 0, 0)) + chunk(b"IDAT", stream) \
        + chunk(b"IEND", b"")
    assert png_image(huge) is None                                       # past the pixel limit: Pillow refuses it


@pytest.mark.parametrize("channels", [1, 3])
def test_decode_file_gives_the_same_array_for_bytes_and_files(tmp_path, channels):
    for i, (mode, shape) in enumerate([("L", (12, 12)), ("RGB", (12, 12, 3)), ("RGBA", (9, 14, 4)), ("L", (20, 7))]):
        data = encoded(RNG.integers(0, 256, shape, dtype=np.uint8), mode)
        path = tmp_path / f"{i}.png"
        path.write_bytes(data)
        for size in ((12, 12), (6, 8)):
            np.testing.assert_array_equal(decode_file(data, channels=channels, size=size, fit="stretch"),
                                          decode_file(str(path), channels=channels, size=size, fit="stretch"))
