"""Encoders turn one input (or the group of tabular columns) into a vector. One file per encoder."""

from dlforge.models.encoders.base import Encoder, encoders
from dlforge.models.encoders import cnn, mlp, resnet, sequence, tabular, text  # noqa: F401  (registration)

__all__ = ["Encoder", "encoders"]
