"""Encoders turn one input (or the group of tabular columns) into a vector. One file per encoder."""

from dlforge.models.encoders.base import Encoder, encoders
from dlforge.models.encoders import (audio, cnn, efficientnet_lite0, minilm, mlp, mobilenet_v2, resnet, sequence,  # noqa: F401
                                       scatter, tabular, text, text_ngram)  # registration

__all__ = ["Encoder", "encoders"]
