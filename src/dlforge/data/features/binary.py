"""Binary columns (inputs and targets): two values mapped to 0/1, the positive one inferred or given."""

from __future__ import annotations

from typing import Literal, Optional

import numpy as np
import torch
from pydantic import Field

from dlforge.data.features.base import (Feature, TargetFeature, as_strings, input_features, output_features,
                                        rows_preview)
from dlforge.core.errors import DataError
from dlforge.data.features.category import form_text
from dlforge.data.features.wire import InputKind, Text, input_kinds

TRUE_WORDS = ("1", "true", "yes", "y", "t", "pos", "positive")


class _BinaryCodec:
    """Shared by inputs and targets: learn which value is positive, map values to 0/1."""

    def _fit_values(self, values):
        strings = as_strings(values)
        seen = sorted({s for s in strings if s is not None})
        if len(seen) > 2:
            raise DataError(f"binary column '{self.name}' has {len(seen)} distinct values {seen[:6]}",
                            where=self.field_path, hint="declare it as type: category")
        positive = self.config.positive
        if positive is None:
            true_like = [s for s in seen if s.lower() in TRUE_WORDS]
            positive = true_like[0] if true_like else seen[-1]
        elif positive not in seen:
            raise DataError(f"positive value '{positive}' never occurs in column '{self.name}' (values: {seen})",
                            where=f"{self.field_path}.positive")
        self.positive_ = positive
        self.negative_ = next((s for s in seen if s != positive), None)
        return self

    def _encode(self, values) -> tuple[np.ndarray, np.ndarray]:
        strings = as_strings(values)
        missing = np.array([s is None for s in strings])
        known = np.array([s in (self.positive_, self.negative_) or s is None for s in strings])
        if not known.all():
            sample = sorted(set(strings[~known].tolist()))[:5]
            raise DataError(f"binary column '{self.name}' has unseen values {sample} (rows {rows_preview(~known)})",
                            where=self.field_path, hint=f"known values: {self.positive_}, {self.negative_}")
        return (strings == self.positive_).astype(np.float32), missing

    def state(self):
        return {"positive": self.positive_, "negative": self.negative_}

    def load_state(self, state):
        self.positive_, self.negative_ = state["positive"], state["negative"]
        return self


@input_features.register("binary")
class BinaryFeature(_BinaryCodec, Feature):
    def fit(self, values):
        return self._fit_values(values)

    def transform(self, values):
        ones, missing = self._encode(values)
        self.count("missing_as_negative", missing.sum())
        return torch.from_numpy(ones).unsqueeze(1)  # (n, 1)

    def signature(self):
        return {"type": "binary", "dtype": "str", "width": 1, "values": [self.negative_, self.positive_]}


@input_kinds.register("binary")
class BinaryKind(InputKind):
    """One of the two values seen in training; null counts as the negative one."""

    def api_field(self, name, sig):
        values = [v for v in sig.get("values", []) if v is not None]
        annotation = Optional[Literal[tuple(values)]] if values else Optional[Text]
        return annotation, Field(..., alias=name,
                                 description=f"One of {values}; null counts as '{values[0] if values else ''}'.")

    def form_part(self, sig):
        return {"type": "string", "enum": [v for v in sig.get("values", []) if v is not None]}

    def form_value(self, value):
        return form_text(value)

    def sample(self, sig):
        return (sig.get("values") or [None])[0]


@output_features.register("binary")
class BinaryTarget(_BinaryCodec, TargetFeature):
    def fit(self, values):
        self._fit_values(values)
        if self.negative_ is None:
            raise DataError(f"target '{self.name}' has a single class '{self.positive_}' in its {len(values)} "
                            "training row(s)",
                            where=self.field_path, hint="a binary target needs both values in the training split")
        return self

    def transform(self, values):
        ones, missing = self._encode(values)
        if missing.any():
            raise DataError(f"target '{self.name}' has missing values (rows {rows_preview(missing)})",
                            where=self.field_path, hint="drop rows without a target")
        return torch.from_numpy(ones)

    def pos_weight(self, encoded: torch.Tensor) -> torch.Tensor | None:
        setting = self.config.pos_weight
        if setting == "none":
            return None
        if setting == "balanced":
            positives = encoded.sum().clamp(min=1)
            return ((len(encoded) - positives) / positives).reshape(1)
        return torch.tensor([float(setting)])

    def decode(self, predictions):
        positive = torch.sigmoid(predictions.squeeze(-1).float()) >= self.config.threshold
        return np.where(positive.numpy(), self.positive_, self.negative_).astype(object)

    def label_names(self):
        return [self.negative_, self.positive_]

    def signature(self):
        return {"type": "binary", "size": 1, "labels": [self.negative_, self.positive_], "threshold": self.config.threshold}
