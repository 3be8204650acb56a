"""Image columns: arrays or file paths, to float (N, C, H, W) with channels, size and scaling fitted on train."""

from __future__ import annotations

import numpy as np
import torch

from dlforge.data.features.base import Feature, input_features
from dlforge.data.image_crop import IMAGENET_MEAN, IMAGENET_STD, decode_resize_crop
from dlforge.data.images import convert_channels, decode_image, resize, to_nchw
from dlforge.errors import DataError

# Rows converted per chunk: bounds the float32 copy (MNIST: 8k rows ≈ 25 MB) while staying vectorised.
CHUNK = 8192


@input_features.register("image")
class ImageFeature(Feature):
    def _as_array(self, values) -> np.ndarray:
        """A numeric (N, H, W[, C]) array; file paths or bytes are decoded with Pillow first."""
        prep = self.config.preprocessing
        if prep.crop is not None:  # pretrained-backbone protocol: resize shorter side, centre crop, RGB
            array, enlarged = decode_resize_crop(values, shorter=prep.resize_shorter, crop=tuple(prep.crop),
                                                 field=self.field_path)
            if getattr(self, "_counting", False):  # in transform only, so fit's pass is not counted twice
                self.count("images_enlarged_to_crop", enlarged)
            return array
        if values.dtype != object:
            return values
        channels = prep.channels or getattr(self, "channels_", None)
        size = prep.size or getattr(self, "size_", None)
        decoded = [decode_image(v, channels=channels, size=size, where=f"{self.field_path} row {i}")
                   for i, v in enumerate(values)]
        shapes = {d.shape for d in decoded}
        if len(shapes) > 1:
            raise DataError(f"images in '{self.name}' have different sizes {sorted(shapes)[:4]}",
                            where=f"{self.field_path}.preprocessing.size", hint="set preprocessing.size: [height, width]")
        return np.stack(decoded)

    def _raw(self, values) -> torch.Tensor:
        x = to_nchw(self._as_array(values))
        return x

    def fit(self, values):
        prep = self.config.preprocessing
        if prep.crop is not None:  # the geometry is fixed by the crop: nothing to learn from a sample
            self.channels_, self.size_ = 3, list(prep.crop)
        else:
            sample = self._raw(values[: min(len(values), CHUNK)])
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
        return resize(convert_channels(x, self.channels_), self.size_)

    def scale(self, x: torch.Tensor) -> torch.Tensor:
        """Pixel values 0..255 to the model's input scale (also used on augmented batches later)."""
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
        self._counting = True
        try:
            chunks = [self.scale(self._geometry(self._raw(values[s:s + CHUNK]))) for s in range(0, len(values), CHUNK)]
        finally:
            self._counting = False
        return torch.cat(chunks) if chunks else torch.empty(0, self.channels_, *self.size_)

    def state(self):
        prep = self.config.preprocessing
        return {"channels": self.channels_, "size": self.size_, "mean": self.mean_, "std": self.std_,
                "scale": prep.scale, "resize_shorter": prep.resize_shorter,
                "crop": list(prep.crop) if prep.crop else None}

    def load_state(self, state):
        self.channels_, self.size_ = state["channels"], list(state["size"])
        self.mean_, self.std_ = state["mean"], state["std"]
        return self

    def signature(self):
        return {"type": "image", "dtype": "image", "shape": [self.channels_, *self.size_]}
