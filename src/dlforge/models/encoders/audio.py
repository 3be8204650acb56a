"""Audio encoders over frames: the sequence encoders with the feature's bands as channels.

An audio input is a (B, 1, bands, frames) log-mel or MFCC "image", so the 2-D `cnn` and `resnet` take it as
they are. `cnn1d`, `gru`, `lstm` and `transformer` read it as a (bands)-channel series over frames instead: the
adapter drops the image axis and adds the all-ones mask channel the sequence encoders expect (every frame
is real: a short clip was padded with silence, which its features show).
"""

from __future__ import annotations

import torch

from dlforge.models.encoders.base import Encoder, encoders
from dlforge.models.encoders.sequence import SequenceCNN, SequenceRNN, SequenceTransformer


class OverFrames(Encoder):
    inner_class: type[Encoder]

    def __init__(self, config, signature: dict, regularization):
        super().__init__()
        self.inner = self.inner_class(config, signature, regularization)
        self.output_dim = self.inner.output_dim

    def forward(self, x):  # (B, 1, bands, frames) -> (B, output_dim)
        frames = x[:, 0]
        return self.inner(torch.cat([frames, torch.ones_like(frames[:, :1])], dim=1))


@encoders.register("audio:cnn1d")
class AudioCNN1D(OverFrames):
    inner_class = SequenceCNN


@encoders.register("audio:lstm")
@encoders.register("audio:gru")
class AudioRNN(OverFrames):
    inner_class = SequenceRNN


@encoders.register("audio:transformer")
class AudioTransformer(OverFrames):
    inner_class = SequenceTransformer
