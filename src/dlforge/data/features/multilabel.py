"""Multi-label targets: each row holds a set of labels, as 'a|b', 'a;b', 'a, b' or a JSON list '["a", "b"]'.

The format is detected on the training split (or given by `separator`) and must be one of those;
anything else (numbers, JSON objects, a cell mixing separators) is refused with the formats that work.
Targets become (n, labels) multi-hot float tensors; predictions are the labels whose sigmoid passes
that label's threshold.
"""

from __future__ import annotations

import json

import numpy as np
import torch

from dlforge.data.features.base import TargetFeature, is_missing, output_features, rows_preview
from dlforge.core.errors import DataError

SEPARATORS = ["|", ";", ","]
FORMATS = "'a|b', 'a;b', 'a,b', a JSON list '[\"a\", \"b\"]', or one label per cell; an empty cell is the empty set"


def detect_separator(values: np.ndarray, *, where: str) -> str:
    """'json', one of SEPARATORS, or 'single' (one label per cell)."""
    cells = [str(v).strip() for v in values.tolist() if not is_missing(v) and str(v).strip()]
    if any(isinstance(v, (int, float)) and not is_missing(v) for v in values.tolist()) or values.dtype.kind in "iufb":
        raise DataError("a multi-label target holds numbers, not label sets", where=where,
                        hint=f"write each row's labels as {FORMATS}; a 0/1 column is a binary output")
    if cells and all(c.startswith("[") for c in cells):
        return "json"
    if any(c.startswith("{") for c in cells):
        bad = next(c for c in cells if c.startswith("{"))
        raise DataError(f"unknown multi-label format: {bad[:60]!r}", where=where, hint=f"use {FORMATS}")
    used = [s for s in SEPARATORS if any(s in c for c in cells)]
    if len(used) > 1:
        both = next(c for c in cells if sum(s in c for s in used) > 1) if any(sum(s in c for s in used) > 1 for c in cells) else None
        example = both or f"cells with {used[0]!r} and cells with {used[1]!r}"
        raise DataError(f"unknown multi-label format: separators {used} are mixed ({str(example)[:60]})", where=where,
                        hint=f"use one separator throughout, or set the output's separator; formats: {FORMATS}")
    return used[0] if used else "single"


def split_labels(values: np.ndarray, separator: str, *, where: str) -> list[list[str]]:
    sets = []
    for i, v in enumerate(values.tolist()):
        if is_missing(v) or not str(v).strip():
            sets.append([])
        elif separator == "json":
            try:
                items = json.loads(str(v))
            except json.JSONDecodeError:
                raise DataError(f"row {i}: {str(v)[:60]!r} is not a JSON list", where=where, hint=f"use {FORMATS}") from None
            if not isinstance(items, list) or not all(isinstance(x, (str, int)) for x in items):
                raise DataError(f"row {i}: {str(v)[:60]!r} is not a list of labels", where=where, hint=f"use {FORMATS}")
            sets.append(sorted({str(x).strip() for x in items if str(x).strip()}))
        elif separator == "single":
            sets.append([str(v).strip()])
        else:
            sets.append(sorted({p.strip() for p in str(v).split(separator) if p.strip()}))
    return sets


@output_features.register("multilabel")
class MultiLabelTarget(TargetFeature):
    def check(self, values):
        """An empty cell is a row with no labels, which is valid for multi-label targets."""
    def fit(self, values):
        sep = self.config.separator
        self.separator_ = detect_separator(values, where=self.field_path) if sep == "auto" else sep
        sets = split_labels(values, self.separator_, where=self.field_path)
        self.labels_ = sorted({label for s in sets for label in s})
        if len(self.labels_) < 2:
            raise DataError(f"target '{self.name}' has {len(self.labels_)} distinct label(s) in training; "
                            "multi-label needs two or more", where=self.field_path, hint=f"labels are written as {FORMATS}")
        unknown = sorted(set(self.config.thresholds) - set(self.labels_))
        if unknown:
            raise DataError(f"thresholds name labels {unknown} that are not in the training data",
                            where=f"{self.field_path}.thresholds", hint=f"labels: {', '.join(self.labels_[:20])}")
        self.thresholds_ = [float(self.config.thresholds.get(lab, self.config.threshold)) for lab in self.labels_]
        return self

    def transform(self, values):
        sets = split_labels(values, self.separator_, where=self.field_path)
        index = {lab: i for i, lab in enumerate(self.labels_)}
        out = np.zeros((len(sets), len(self.labels_)), dtype=np.float32)
        unseen = np.zeros(len(sets), dtype=bool)
        for row, labels in enumerate(sets):
            for lab in labels:
                if lab in index:
                    out[row, index[lab]] = 1.0
                else:
                    unseen[row] = True
        # Labels never seen in training cannot be predicted; they are dropped from those rows and counted.
        self.count("unseen_labels_dropped", unseen.sum())
        self.count("empty_sets", sum(1 for s in sets if not s))
        return torch.from_numpy(out)

    def decode(self, predictions):
        chosen = torch.sigmoid(predictions.float()) >= torch.tensor(self.thresholds_)
        joiner = "|" if self.separator_ in ("json", "single") else self.separator_
        return np.array([joiner.join(lab for lab, on in zip(self.labels_, row) if on) for row in chosen.tolist()],
                        dtype=object)

    def label_names(self):
        return list(self.labels_)

    def state(self):
        return {"labels": self.labels_, "separator": self.separator_, "thresholds": self.thresholds_}

    def load_state(self, state):
        self.labels_, self.separator_ = list(state["labels"]), state["separator"]
        self.thresholds_ = list(state["thresholds"])
        return self

    def signature(self):
        return {"type": "multilabel", "size": len(self.labels_), "labels": self.labels_, "thresholds": self.thresholds_}


__all__ = ["MultiLabelTarget", "detect_separator", "rows_preview"]
