"""Category columns: a vocabulary fitted on train (min frequency, max size) with an unknown bucket."""

from __future__ import annotations

from collections import Counter
from typing import Annotated, Optional, Union

import numpy as np
import torch
from pydantic import Field

from dlforge.data.features.base import (Feature, TargetFeature, as_strings, input_features, output_features,
                                        rows_preview)
from dlforge.core.errors import DataError
from dlforge.data.features.wire import InputKind, Text, input_kinds

UNKNOWN = "<unknown>"


def _fold(label: str) -> str:
    text = " ".join(label.split()).lower()
    try:
        return repr(float(text))
    except ValueError:
        return text


def encode(strings: np.ndarray, index: dict[str, int], default: int) -> np.ndarray:
    return np.fromiter((index.get(s, default) for s in strings), dtype=np.int64, count=len(strings))


@input_features.register("category")
class CategoryFeature(Feature):
    def fit(self, values):
        prep = self.config.preprocessing
        counts = Counter(s for s in as_strings(values) if s is not None)
        kept = [v for v, c in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if c >= prep.min_frequency]
        self.vocabulary_ = [UNKNOWN] + kept[: prep.max_size]  # index 0: unknown, missing, or rare
        return self

    def transform(self, values):
        strings = as_strings(values)
        index = {v: i for i, v in enumerate(self.vocabulary_)}
        codes = encode(strings, index, 0)
        self.count("unknown_or_missing", (codes == 0).sum())
        return torch.from_numpy(codes)

    def state(self):
        return {"vocabulary": self.vocabulary_}

    def load_state(self, state):
        self.vocabulary_ = list(state["vocabulary"])
        return self

    def signature(self):
        dim = self.config.embedding_dim or min(32, (len(self.vocabulary_) + 1) // 2)
        return {"type": "category", "dtype": "str", "cardinality": len(self.vocabulary_), "embedding_dim": dim,
                "values": self.vocabulary_[1:50]}


def form_text(value):
    """A form part of a text-valued input: file bytes as UTF-8 text (bad bytes replaced), an empty field as null."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return None if value == "" else value


@input_kinds.register("category")
class CategoryKind(InputKind):
    """A string (or an integer code) from the vocabulary; unseen values and null count as unknown."""

    def api_field(self, name, sig):
        values = [str(v) for v in sig.get("values", [])]
        annotation = Optional[Union[Text, Annotated[int, Field(strict=True)]]]
        return annotation, Field(..., alias=name, examples=values[:5] or None,
                                 description="A category; values never seen in training (or null) count as unknown. "
                                             + (f"Known values include: {', '.join(values[:20])}." if values else ""))

    def form_value(self, value):
        return form_text(value)

    def sample(self, sig):
        return (sig.get("values") or [None])[0]


@output_features.register("category")
class CategoryTarget(TargetFeature):
    def fit(self, values):
        strings = as_strings(values)
        missing = np.array([s is None for s in strings])
        if missing.any():
            raise DataError(f"target '{self.name}' has {int(missing.sum())} missing value(s) (rows {rows_preview(missing)})",
                            where=self.field_path, hint="drop rows without a target")
        # Integer-like labels sort numerically so that class 10 comes after 9.
        labels = sorted(set(strings), key=lambda s: (0, int(s), s) if s.lstrip("-").isdigit() else (1, 0, s))
        if len(labels) < 2:
            raise DataError(f"target '{self.name}' has a single class {labels} in its {len(strings)} training row(s); "
                            "a classifier needs two or more", where=self.field_path,
                            hint="check the target column, or use more data" if len(strings) >= 10 else
                            f"{len(strings)} training row(s) is too few to learn from: use more data")
        self.labels_ = labels
        self._check_class_weights()
        # Kept apart as written, but said: ' pos'/'pos', 'True'/'true', '1'/'1.0' are likely one class typed twice.
        folded = Counter(_fold(s) for s in labels)
        self.count("labels_kept_apart_that_differ_only_in_case_spaces_or_number_format",
                   sum(n for n in folded.values() if n > 1))
        return self

    def _check_class_weights(self) -> None:
        """A {label: weight} map naming a label the data does not have is a recipe mistake: caught when the
        target is fitted (so `recipe check` finds it), not when training builds its loss."""
        setting = self.config.class_weights
        unknown = sorted(set(setting) - set(self.labels_)) if isinstance(setting, dict) else []
        if unknown:
            raise DataError(f"class_weights names label(s) {unknown[:5]} that are not in the training data",
                            where=f"{self.field_path}.class_weights", hint=f"labels: {', '.join(self.labels_[:20])}")

    def transform(self, values):
        strings = as_strings(values)
        index = {v: i for i, v in enumerate(self.labels_)}
        codes = encode(strings, index, -1)
        unseen = codes < 0
        if unseen.any():
            sample = sorted(set(strings[unseen].tolist()), key=str)[:5]
            raise DataError(
                f"target '{self.name}' has label(s) {sample} never seen in training (rows {rows_preview(unseen)})",
                where=self.field_path, hint=f"known labels: {', '.join(self.labels_[:20])}",
            )
        return torch.from_numpy(codes)

    def class_weights(self, encoded: torch.Tensor) -> torch.Tensor | None:
        setting = self.config.class_weights
        if setting == "none":
            return None
        if setting == "balanced":
            counts = torch.bincount(encoded, minlength=len(self.labels_)).float().clamp(min=1)
            return counts.sum() / (len(self.labels_) * counts)
        unknown = sorted(set(setting) - set(self.labels_))
        if unknown:
            raise DataError(f"class_weights names labels {unknown} that are not in the training data",
                            where=f"{self.field_path}.class_weights", hint=f"labels: {', '.join(self.labels_)}")
        return torch.tensor([float(setting.get(label, 1.0)) for label in self.labels_])

    def decode(self, predictions):
        return np.asarray(self.labels_, dtype=object)[predictions.argmax(-1).numpy()]

    def label_names(self):
        return list(self.labels_)

    def state(self):
        return {"labels": self.labels_}

    def load_state(self, state):
        self.labels_ = list(state["labels"])
        return self

    def signature(self):
        return {"type": "category", "size": len(self.labels_), "labels": self.labels_}
