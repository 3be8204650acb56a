"""Per-type preprocessing: fitted on the training split only, applied to any split, saved as JSON."""

from dlforge.data.features.base import Feature, TargetFeature, input_features, output_features
from dlforge.data.features.wire import InputKind, input_kinds, kind_of
from dlforge.data.features import number, category, binary, image, multilabel, sequence, text, audio, id  # noqa: F401  (registration)

__all__ = ["Feature", "InputKind", "TargetFeature", "input_features", "input_kinds", "kind_of", "output_features"]
