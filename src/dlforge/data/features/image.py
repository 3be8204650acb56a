"""Image columns: arrays or file paths, to float (N, C, H, W) with channels, size and scaling fitted on train."""

from __future__ import annotations

from typing import Annotated, Any, Union

import numpy as np
import torch
from pydantic import BeforeValidator, Field, WithJsonSchema

from dlforge.data.features.base import Feature, input_features
from dlforge.data.images.decode import convert_channels, decode_image, resize, to_nchw
from dlforge.core.errors import DataError, PredictError
from dlforge.data.features.wire import InputKind, input_kinds, sent_file
from dlforge.data.limits import check_fits

# The input scale of ImageNet-pretrained weights (torchvision's mean/std of the ImageNet training set).
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]

# Rows converted per chunk: bounds the float32 copy (MNIST: 8k rows ≈ 25 MB) while staying vectorised.
CHUNK = 8192
# Images decoded to fit channels/size/mean/std when a column streams (files are never all decoded at once).
STREAM_SAMPLE = 512


@input_features.register("image")
class ImageFeature(Feature):
    def _as_array(self, values) -> np.ndarray:
        """A numeric (N, H, W[, C]) array; file paths or bytes are decoded with Pillow first."""
        if values.dtype != object and values.dtype.kind not in "US":
            return values
        prep = self.config.preprocessing
        channels = prep.channels or getattr(self, "channels_", None)
        size = prep.size or getattr(self, "size_", None)
        if channels in (1, 3) and size is not None and all(isinstance(v, (bytes, bytearray)) for v in values):
            return self._decode_bytes(values, channels, size)
        decoded = [self._decode_one(v, channels, size, where=f"{self.field_path} row {i}") for i, v in enumerate(values)]
        shapes = {d.shape for d in decoded}
        if len(shapes) > 1:
            raise self._sizes_differ(shapes)
        return np.stack(decoded)

    def _sizes_differ(self, shapes: set) -> DataError:
        return DataError(f"images in '{self.name}' have different sizes {sorted(shapes)[:4]}",
                         where=f"{self.field_path}.preprocessing.size", hint="set preprocessing.size: [height, width]")

    def _decode_bytes(self, values, channels: int, size) -> np.ndarray:
        """Image bytes (uploads, a served model's requests) decoded into one (N, H, W, C) array. A plain PNG already
        in the wanted mode and size (what a client of a served model usually sends) is copied in directly; anything
        else goes through `_decode_one`, which converts, resizes and words errors as for any file."""
        from dlforge.data.images.decode import png_raw

        height, width = size
        mode = "L" if channels == 1 else "RGB"
        out = np.empty((len(values), height, width, channels), dtype=np.uint8)
        for i, value in enumerate(values):
            decoded = png_raw(value) if isinstance(value, (bytes, bytearray)) else None
            if decoded is not None and decoded[0] == mode and decoded[1] == (width, height):
                out[i] = np.frombuffer(decoded[2], dtype=np.uint8).reshape(height, width, channels)
                continue
            decoded = self._decode_one(value, channels, size, where=f"{self.field_path} row {i}")
            if decoded.shape != out.shape[1:]:  # an array of another size (files are resized to `size`)
                raise self._sizes_differ({decoded.shape, out.shape[1:]})
            out[i] = decoded
        return out

    def _interpolation(self) -> str:
        """The fitted (or loaded) resample filter; the recipe's before fitting."""
        return getattr(self, "interpolation_", None) or self.config.preprocessing.interpolation

    def _decode_one(self, item, channels, size, *, where: str) -> np.ndarray:
        """Files decode as in training (same fit: stretch/crop/pad); arrays and unknown channel counts as before."""
        if channels is None or isinstance(item, np.ndarray):
            return decode_image(item, channels=channels, size=size, where=where, interpolation=self._interpolation())
        from dlforge.data.images.files import decode_file

        try:
            prep = self.config.preprocessing
            return decode_file(item, channels=channels, size=size, fit=prep.fit, shorter=prep.resize_shorter,
                               interpolation=self._interpolation())
        except FileNotFoundError:
            raise DataError(f"image file not found: {item}", where=where) from None
        except Exception as exc:
            raise DataError(f"cannot decode image {str(item)[:200]}: {exc}", where=where,
                            hint="check the file, or remove it") from None

    def _raw(self, values) -> torch.Tensor:
        x = to_nchw(self._as_array(values))
        return x

    def check(self, values):
        """Refuse a size whose decoded float32 split could never fit, before any chunk is resized."""
        prep = self.config.preprocessing
        if prep.size is not None and values.dtype != object:  # file paths: the streaming plan bounds memory
            channels = prep.channels or (values.shape[-1] if values.ndim == 4 else 1)
            check_fits(len(values) * channels * prep.size[0] * prep.size[1] * 4.0,
                       what=f"resizing {len(values)} images to {prep.size[0]}x{prep.size[1]}",
                       where=f"{self.field_path}.preprocessing.size", hint="choose a smaller size")

    def fit(self, values):
        prep = self.config.preprocessing
        if values.dtype == object:
            # Streamed image files: statistics come from an evenly spaced sample instead of decoding everything.
            values = values[np.linspace(0, len(values) - 1, min(len(values), STREAM_SAMPLE)).astype(int)]
        sample = self._raw(values[: min(len(values), CHUNK)])
        self.interpolation_ = prep.interpolation
        self.channels_ = prep.channels or (3 if sample.shape[1] == 4 else int(sample.shape[1]))
        self.size_ = list(prep.size or sample.shape[-2:])
        self.mean_, self.std_ = [0.0] * self.channels_, [1.0] * self.channels_
        if prep.scale == "imagenet":
            self.mean_, self.std_ = list(IMAGENET_MEAN), list(IMAGENET_STD)
        if prep.scale == "standard":
            total = torch.zeros(self.channels_, dtype=torch.float64)
            total_sq = torch.zeros(self.channels_, dtype=torch.float64)
            count = 0
            for start in range(0, len(values), CHUNK):
                x = self._geometry(self._raw(values[start:start + CHUNK])) / 255.0
                total += x.sum((0, 2, 3)).double()
                total_sq += (x.double() ** 2).sum((0, 2, 3))
                count += x.shape[0] * x.shape[2] * x.shape[3]
            mean = total / count
            self.mean_ = mean.tolist()
            self.std_ = (total_sq / count - mean**2).clamp(min=1e-12).sqrt().tolist()
        return self

    def _geometry(self, x: torch.Tensor) -> torch.Tensor:
        return resize(convert_channels(x, self.channels_), self.size_, self._interpolation())

    # True when the runtime's graph does the scaling itself (an ONNX export with its preprocessing in the graph):
    # `scale` then leaves pixels 0..255 as they are. Set on a loaded Predictor's features only, never in training.
    scale_in_graph = False

    def scale(self, x: torch.Tensor) -> torch.Tensor:
        """Pixel values 0..255 to the model's input scale (also used on augmented batches later)."""
        if self.scale_in_graph:
            return x
        return self.scale_pixels(x)

    def scale_pixels(self, x: torch.Tensor) -> torch.Tensor:
        """The recipe's scaling of pixels 0..255 (affine per channel; the ONNX export folds it into the graph)."""
        kind = self.config.preprocessing.scale
        if kind == "unit":
            return x / 255.0
        if kind == "symmetric":
            return (x / 255.0 - 0.5) / 0.5
        if kind in ("standard", "imagenet"):
            mean = torch.tensor(self.mean_).view(1, -1, 1, 1)
            std = torch.tensor(self.std_).view(1, -1, 1, 1)
            return (x / 255.0 - mean) / std
        return x

    def transform(self, values):
        if len(values) == 0:
            return torch.empty(0, self.channels_, *self.size_)
        # Chunks are written into one preallocated tensor: concatenating a list of chunks would hold the
        # whole split twice at the peak (MNIST train: 188 MB more).
        out = None
        for start in range(0, len(values), CHUNK):
            chunk = self.scale(self._geometry(self._raw(values[start:start + CHUNK])))
            if out is None:
                out = torch.empty((len(values), *chunk.shape[1:]), dtype=chunk.dtype)
            out[start:start + len(chunk)] = chunk
        return out

    def state(self):
        prep = self.config.preprocessing  # the geometry/scale protocol, so model.json alone says how inputs are prepared
        return {"channels": self.channels_, "size": self.size_, "mean": self.mean_, "std": self.std_,
                "scale": prep.scale, "fit": prep.fit, "resize_shorter": prep.resize_shorter,
                "interpolation": self.interpolation_}

    def load_state(self, state):
        self.channels_, self.size_ = state["channels"], list(state["size"])
        self.mean_, self.std_ = state["mean"], state["std"]
        # model.json from before the option was trained bilinear, even where the recipe now resolves to
        # another filter (an efficientnet_lite0 recipe fills in bicubic): predict as it was trained.
        self.interpolation_ = state.get("interpolation", "bilinear")
        return self

    def signature(self):
        return {"type": "image", "dtype": "image", "shape": [self.channels_, *self.size_]}


# ---------------------------------------------------------------- at the edges: API, Python callers, init
def pixel_array(value: list, channels: int, height: int, width: int) -> np.ndarray:
    """A nested list of pixels 0-255 as uint8 (H, W, channels), grey <-> RGB converted as files are in training."""
    try:
        array = np.asarray(value, dtype=np.float32)
    except (ValueError, TypeError):
        raise ValueError("a pixel array must be a rectangular nested list of numbers") from None
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[:2] != (height, width) or array.shape[2] not in (1, 3):
        raise ValueError(f"a pixel array must be {height}x{width} (grey) or {height}x{width}x3 (RGB); "
                         f"got shape {list(np.shape(value))}")
    if not np.isfinite(array).all() or array.min() < 0 or array.max() > 255:
        raise ValueError("pixel values must be numbers from 0 to 255")
    if array.shape[2] != channels:
        array = (np.repeat(array, 3, axis=2) if channels == 3
                 else (array @ np.array([0.299, 0.587, 0.114], dtype=np.float32))[:, :, None])
    return array.round().astype(np.uint8)


def _numeric_images(value: np.ndarray, sig: dict, name: str) -> np.ndarray:
    """Numeric image data as (N, H, W[, C]); a single image gets a batch axis. Sizes must match the model."""
    channels, height, width = sig["shape"]
    if value.ndim == 2 or (value.ndim == 3 and value.shape[-1] in (1, 3, 4) and value.shape[:2] == (height, width)):
        value = value[None]
    if value.ndim not in (3, 4) or tuple(value.shape[1:3]) != (height, width):
        raise PredictError(
            f"input '{name}' expects images of {height}x{width} pixels as (N, {height}, {width}[, C]) arrays; "
            f"got an array of shape {tuple(value.shape)}",
            hint="resize the arrays, or pass image file paths (those are resized for you)")
    return value


@input_kinds.register("image")
class ImageKind(InputKind):
    """A file (path, upload, base64) resized for the model, or pixels already at the model's size."""

    file_input = True

    def api_field(self, name, sig):
        channels, height, width = sig["shape"]

        def parse(value: Any) -> Union[bytes, np.ndarray]:
            data = sent_file(value, "image")
            if data is not None:
                return data
            if isinstance(value, list):
                return pixel_array(value, channels, height, width)
            raise ValueError("an image is a base64 string (or data: URL) or a nested list of pixel values")

        pixel = {"type": "number", "minimum": 0, "maximum": 255}
        schema = {
            "description": f"An image: the file's bytes base64-encoded (PNG, JPEG, ...; resized to {height}x{width}), "
                           f"or pixel values 0-255 as a {height}x{width} (grey) or {height}x{width}x3 (RGB) "
                           "nested list.",
            "anyOf": [
                {"type": "string", "contentEncoding": "base64", "contentMediaType": "image/*", "minLength": 1},
                {"type": "array", "minItems": height, "maxItems": height, "description": "grey pixels, row by row",
                 "items": {"type": "array", "minItems": width, "maxItems": width, "items": pixel}},
                {"type": "array", "minItems": height, "maxItems": height, "description": "RGB pixels, row by row",
                 "items": {"type": "array", "minItems": width, "maxItems": width,
                           "items": {"type": "array", "minItems": 3, "maxItems": 3, "items": pixel}}},
            ],
        }
        return Annotated[Any, BeforeValidator(parse), WithJsonSchema(schema)], Field(..., alias=name)

    def form_part(self, sig):
        return {"type": "string", "format": "binary", "description": "The image file."}

    def request_column(self, values, sig):
        if all(isinstance(v, np.ndarray) for v in values):
            return np.stack(values)  # (N, H, W, C) uint8, already the model's size
        return super().request_column(values, sig)  # bytes (decoded by the feature) and arrays

    def python_column(self, value, sig, name):
        from pathlib import Path

        if isinstance(value, (str, Path, bytes)):
            return np.array([value], dtype=object)
        if isinstance(value, (list, tuple, np.ndarray)) and len(value) and isinstance(value[0], (str, Path, bytes)):
            return np.array(list(value), dtype=object)
        try:
            array = np.asarray(value)
        except ValueError:
            raise PredictError(f"input '{name}': images of different sizes cannot form one array",
                               hint="pass a list of file paths, or same-size arrays") from None
        if array.dtype.kind not in "biuf":
            raise PredictError(f"input '{name}' expects image arrays or file paths; got {array.dtype} values")
        return _numeric_images(array, sig, name)

    def table_column(self, values, root):
        from dlforge.data.images.files import is_file_column, resolve_paths

        # Paths in a CSV are relative to the CSV's folder, as the user reads them (and as training resolved them).
        return resolve_paths(values, root) if is_file_column(values) else values

    def sample(self, sig):
        channels, height, width = sig["shape"]
        return np.zeros((height, width, channels), dtype=np.uint8)

    def init_entry(self, values):
        if values.dtype == object:  # file paths: sizes differ, so resize (pad keeps the aspect) and pool globally
            return {"preprocessing": {"size": [64, 64], "fit": "pad"},
                    "encoder": {"name": "cnn", "channels": [16, 32], "padding": "same", "global_pool": True,
                                "dense": [64]}}
        return {"encoder": {"name": "cnn", "channels": [16, 32], "padding": "same", "dense": [64]}}
