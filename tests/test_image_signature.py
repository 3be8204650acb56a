"""Image bytes open with the Pillow plugin their signature names (data/images/decode.py: pillow_formats)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from dlforge.core.errors import DataError
from dlforge.data.images.decode import decode_image, pillow_formats
from dlforge.data.images.files import decode_file
from dlforge.serve.security import image_pixels, png_pixels


def _bytes(fmt: str, mode: str = "L") -> bytes:
    buffer = io.BytesIO()
    array = (np.arange(28 * 28 * (3 if mode == "RGB" else 1)) % 251).astype(np.uint8)
    Image.fromarray(array.reshape((28, 28, 3) if mode == "RGB" else (28, 28)), mode).save(buffer, format=fmt)
    return buffer.getvalue()


def test_png_and_jpeg_are_named_other_bytes_and_paths_are_probed(tmp_path):
    assert pillow_formats(_bytes("PNG")) == ["PNG"]
    assert pillow_formats(_bytes("JPEG", "RGB")) == ["JPEG"]
    assert pillow_formats(_bytes("BMP")) is None and pillow_formats(b"junk") is None
    assert pillow_formats(str(tmp_path / "a.png")) is None


@pytest.mark.parametrize("fmt, mode", [("PNG", "L"), ("PNG", "RGB"), ("JPEG", "RGB"), ("BMP", "L"), ("GIF", "L")])
def test_decoding_is_the_same_as_pillow_probing(fmt, mode):
    data = _bytes(fmt, mode)
    with Image.open(io.BytesIO(data)) as img:  # Pillow on its own: probe every plugin
        expected = np.asarray(img.convert("L"))
    assert (decode_file(data, channels=1, size=(28, 28), fit="pad")[:, :, 0] == expected).all()
    assert image_pixels(data) == 28 * 28


def test_a_png_signature_on_garbage_is_still_a_clear_error():
    with pytest.raises(DataError, match="cannot decode image"):
        decode_image(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10, channels=1, size=(28, 28), where="row 0")


@pytest.mark.parametrize("mode, size", [("L", (31, 17)), ("RGB", (5, 64)), ("I;16", (3, 2))])
def test_a_png_header_is_read_without_pillow_and_agrees_with_it(mode, size):
    buffer = io.BytesIO()
    Image.new(mode, size).save(buffer, format="PNG")
    data = buffer.getvalue()
    with Image.open(io.BytesIO(data)) as img:
        assert png_pixels(data) == img.width * img.height == size[0] * size[1] == image_pixels(data)


def test_a_damaged_png_header_is_left_to_pillow_which_refuses_it():
    buffer = io.BytesIO()
    Image.new("L", (31, 17)).save(buffer, format="PNG")
    damaged = bytearray(buffer.getvalue())
    damaged[29] ^= 0xFF  # the IHDR chunk's CRC no longer matches its 13 bytes
    assert png_pixels(bytes(damaged)) is None
    with pytest.raises(Exception):  # Pillow: cannot identify image file
        image_pixels(bytes(damaged))
    zero = bytearray(buffer.getvalue())
    zero[16:20] = b"\0\0\0\0"  # width 0 (CRC fixed up): not an image size to trust
    zero[29:33] = (__import__("zlib").crc32(bytes(zero[12:29])) & 0xFFFFFFFF).to_bytes(4, "big")
    assert png_pixels(bytes(zero)) is None
    assert png_pixels(_bytes("JPEG", "RGB")) is None and png_pixels(b"\x89PNG\r\n\x1a\n") is None
