"""User and item identifiers (`type: id`), and implicit-feedback targets (`type: interaction`).

An id is a category whose vocabulary is the training interactions' ids, most frequent first, with index 0 the
unknown bucket: an id never seen in training (a new user or item: cold start), a missing one, or one rarer than
`min_frequency`. A recommender embeds the index; bucket 0 is what a cold id gets (and, with id dropout, what
the towers learn to score from side features alone). The vocabulary is JSON state in model.json.

An interaction target marks every row as one positive (implicit feedback): its tensor is all ones, and the
model ranks items; the column's own values are not used (a rating of 1 star is still an interaction).
"""

from __future__ import annotations

from collections import Counter
from typing import Annotated, Optional, Union

import numpy as np
import torch
from pydantic import Field

from dlforge.data.features.base import Feature, TargetFeature, as_strings, input_features, output_features
from dlforge.data.features.category import UNKNOWN, encode, form_text
from dlforge.data.features.wire import InputKind, Text, input_kinds


@input_features.register("id")
class IdFeature(Feature):
    def fit(self, values):
        counts = Counter(s for s in as_strings(values) if s is not None)
        # Most frequent first, ties by the id (numerically for integer ids: 2 before 10), so the popular ids get the
        # small indices and the most-popular ranking breaks ties as the MovieLens README does.
        def order(kv):
            value = kv[0]
            return (-kv[1], 0, int(value), value) if value.lstrip("-").isdigit() else (-kv[1], 1, 0, value)

        kept = [v for v, c in sorted(counts.items(), key=order) if c >= self.config.min_frequency]
        self.vocabulary_ = [UNKNOWN, *kept]
        self.index_ = {v: i for i, v in enumerate(self.vocabulary_)}
        return self

    def transform(self, values):
        codes = encode(as_strings(values), self.index_, 0)
        self.count("unknown_or_missing", (codes == 0).sum())
        return torch.from_numpy(codes)

    def codes(self, values) -> np.ndarray:
        """The vocabulary index of each value (0: unknown), without counting them in the data report."""
        return encode(as_strings(np.asarray(values, dtype=object)), self.index_, 0)

    def state(self):
        return {"vocabulary": self.vocabulary_}

    def load_state(self, state):
        self.vocabulary_ = list(state["vocabulary"])
        self.index_ = {v: i for i, v in enumerate(self.vocabulary_)}
        return self

    def signature(self):
        return {"type": "id", "dtype": "str", "role": self.config.role, "cardinality": len(self.vocabulary_),
                "values": self.vocabulary_[1:50]}


@input_kinds.register("id")
class IdKind(InputKind):
    """A user or item id as a string or an integer; one never seen in training (or null) is the unknown bucket."""

    def api_field(self, name, sig):
        values = [str(v) for v in sig.get("values", [])]
        annotation = Optional[Union[Text, Annotated[int, Field(strict=True)]]]
        return annotation, Field(..., alias=name, examples=values[:5] or None,
                                 description=f"A {sig.get('role', '')} id; one never seen in training (or null) is "
                                             "scored as unknown (cold start).")

    def form_value(self, value):
        return form_text(value)

    def sample(self, sig):
        return (sig.get("values") or [None])[0]


@output_features.register("interaction")
class InteractionTarget(TargetFeature):
    """Every row is one positive interaction; the model's output is a score (higher: more likely)."""

    def check(self, values):  # the column's values are not used, so missing ones are fine
        return None

    n_items_ = 0  # the catalogue size (the item vocabulary, unknown bucket included), set by `prepare`

    def fit(self, values):
        return self

    def transform(self, values):
        return torch.ones(len(values), dtype=torch.float32)

    def decode(self, predictions):
        return predictions.float()[:, 0].numpy()

    def state(self):
        return {"n_items": self.n_items_}

    def load_state(self, state):
        self.n_items_ = int(state["n_items"])
        return self

    def signature(self):
        cfg = self.config
        return {"type": "interaction", "size": 1, "loss": cfg.loss, "negatives": cfg.negatives, "sampler": cfg.sampler,
                "k": 10, "n_items": self.n_items_}
