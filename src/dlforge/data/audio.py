"""Sound as tensors: decode (soundfile), mono, resample, pad/crop, then log-mel or MFCC on whole batches.

torchaudio does not import beside this torch (as torchvision does not), so the front end is written on torch
ops: `torch.stft`, a triangular mel filterbank (HTK mel scale) and an orthonormal DCT-II for MFCC, each a
matrix built once per shape. Resampling is band-limited (windowed-sinc) interpolation as one strided conv1d
per batch, the method of torchaudio's `resample` and of Smith's digital audio resampling notes.

Decoding goes through soundfile (libsndfile, bundled in its wheel: WAV, FLAC, OGG/Vorbis, ...), the `audio`
extra. Every clip is checked: a file that does not decode, holds no samples, or is longer than the limit
is a DataError naming it; a silent clip (all zeros) is counted, since its features carry no information.
"""

from __future__ import annotations

import io
import math
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from dlforge.core.errors import DataError

AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".oga", ".aiff", ".aif"}
# A clip longer than this is refused before it is decoded (from the header): 10 minutes of 48 kHz stereo
# float32 is already 220 MB. The recipe's `preprocessing.max_seconds` lowers it.
MAX_SECONDS = 600.0


def _soundfile():
    try:
        import soundfile
    except ImportError:  # pragma: no cover - the audio extra is part of every dev install
        raise DataError("audio inputs need the soundfile package", where="inputs",
                        hint="pip install 'dlforge[audio]'") from None
    return soundfile


def audio_info(item: str | Path | bytes) -> tuple[int, int]:
    """(frames, sample rate) from the file's header, without decoding the samples."""
    sf = _soundfile()
    info = sf.info(io.BytesIO(item) if isinstance(item, (bytes, bytearray)) else str(item))
    return int(info.frames), int(info.samplerate)


def decode_audio(item: str | Path | bytes, *, max_seconds: float = MAX_SECONDS) -> tuple[np.ndarray, int]:
    """One clip as float32 mono samples in [-1, 1] and its sample rate. Raises ValueError with a readable reason."""
    sf = _soundfile()
    source = io.BytesIO(bytes(item)) if isinstance(item, (bytes, bytearray)) else str(item)
    if isinstance(item, (bytes, bytearray)) and not item:
        raise ValueError("the file is empty (0 bytes)")
    try:
        with sf.SoundFile(source) as handle:
            if handle.frames > max_seconds * handle.samplerate:
                raise ValueError(f"the clip lasts {handle.frames / handle.samplerate:.1f} s; the limit is {max_seconds:g} s")
            samples = handle.read(dtype="float32", always_2d=True)
            rate = int(handle.samplerate)
    except sf.LibsndfileError as exc:
        raise ValueError(f"not a readable sound file ({exc})") from None
    if samples.shape[0] == 0:
        raise ValueError("the clip has no samples (0 s)")
    return samples.mean(axis=1), rate


# ---------------------------------------------------------------- resampling
@lru_cache(maxsize=16)
def _sinc_kernels(orig: int, new: int, zeros: int = 6, rolloff: float = 0.99) -> tuple[torch.Tensor, int]:
    """(new, 1, taps) filters, one per output phase, and the padding on each side; `orig`/`new` are coprime."""
    cutoff = min(orig, new) * rolloff
    half = math.ceil(zeros * orig / cutoff)
    taps = torch.arange(-half, half + orig, dtype=torch.float64)[None, :] / orig
    phases = -torch.arange(new, dtype=torch.float64)[:, None] / new
    t = ((taps + phases) * cutoff).clamp(-zeros, zeros)
    window = torch.cos(t * math.pi / zeros / 2) ** 2  # a Hann window over ±zeros zero crossings
    t = t * math.pi
    sinc = torch.where(t == 0, torch.ones_like(t), torch.sin(t) / torch.where(t == 0, torch.ones_like(t), t))
    return (sinc * window * (cutoff / orig)).float()[:, None, :], half


def resample(x: torch.Tensor, orig: int, new: int) -> torch.Tensor:
    """(n, samples) at `orig` Hz to (n, ceil(samples * new / orig)) at `new` Hz, band-limited to the lower rate."""
    if orig == new:
        return x
    g = math.gcd(orig, new)
    orig, new = orig // g, new // g
    kernels, half = _sinc_kernels(orig, new)
    n, length = x.shape
    padded = torch.nn.functional.pad(x[:, None, :], (half, half + orig))
    out = torch.nn.functional.conv1d(padded, kernels, stride=orig)  # (n, new, frames): one row per phase
    out = out.transpose(1, 2).reshape(n, -1)
    return out[:, : math.ceil(new * length / orig)]


# ---------------------------------------------------------------- spectral features
@lru_cache(maxsize=16)
def mel_filterbank(n_fft: int, n_mels: int, sample_rate: int, f_min: float = 0.0, f_max: float | None = None) -> torch.Tensor:
    """(n_fft // 2 + 1, n_mels) triangular filters on the HTK mel scale, each peaking at 1."""
    f_max = f_max or sample_rate / 2
    mel = lambda f: 2595.0 * np.log10(1.0 + f / 700.0)  # noqa: E731
    hz = lambda m: 700.0 * (10 ** (m / 2595.0) - 1.0)  # noqa: E731
    edges = hz(np.linspace(mel(f_min), mel(f_max), n_mels + 2))
    freqs = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    lower = (freqs[:, None] - edges[None, :-2]) / (edges[1:-1] - edges[:-2])[None, :]
    upper = (edges[None, 2:] - freqs[:, None]) / (edges[2:] - edges[1:-1])[None, :]
    return torch.from_numpy(np.maximum(0.0, np.minimum(lower, upper))).float()


@lru_cache(maxsize=16)
def dct_matrix(n_mels: int, n_mfcc: int) -> torch.Tensor:
    """(n_mels, n_mfcc) orthonormal DCT-II: log-mel frames @ it = MFCC."""
    k = np.arange(n_mfcc)[None, :]
    m = np.arange(n_mels)[:, None]
    basis = np.cos(np.pi / n_mels * (m + 0.5) * k) * np.sqrt(2.0 / n_mels)
    basis[:, 0] /= np.sqrt(2.0)
    return torch.from_numpy(basis).float()


def log_mel(wave: torch.Tensor, *, sample_rate: int, n_fft: int, win: int, hop: int, n_mels: int) -> torch.Tensor:
    """(n, samples) to (n, n_mels, frames): power spectrogram (Hann window, centred frames) through the mel
    filterbank, then log with a floor of 1e-6 (-138 dB), so silence is finite."""
    window = torch.hann_window(win, periodic=True, dtype=wave.dtype)
    spec = torch.stft(wave, n_fft=n_fft, hop_length=hop, win_length=win, window=window, center=True,
                      pad_mode="constant", return_complex=True)
    power = spec.real**2 + spec.imag**2  # (n, freqs, frames)
    mels = torch.einsum("nft,fm->nmt", power, mel_filterbank(n_fft, n_mels, sample_rate))
    return torch.log(mels + 1e-6)


def mfcc(log_mels: torch.Tensor, n_mfcc: int) -> torch.Tensor:
    """(n, n_mels, frames) log-mel to (n, n_mfcc, frames) cepstral coefficients."""
    return torch.einsum("nmt,mk->nkt", log_mels, dct_matrix(log_mels.shape[1], n_mfcc))


def fit_length(waves: list[np.ndarray], samples: int, pad: str = "silence") -> tuple[torch.Tensor, torch.Tensor]:
    """Clips cropped (centre) or padded to `samples`: with silence on the right, or (`pad="repeat"`) by playing
    the clip again until the duration is filled, so a short event is not diluted by silence when the encoder
    averages over time. Also returns each clip's real length, capped."""
    out = torch.zeros(len(waves), samples)
    lengths = torch.empty(len(waves), dtype=torch.long)
    for i, w in enumerate(waves):
        if len(w) > samples:
            start = (len(w) - samples) // 2
            w = w[start:start + samples]
        w = np.ascontiguousarray(w, dtype=np.float32)
        lengths[i] = len(w)
        if pad == "repeat" and 0 < len(w) < samples:
            w = np.tile(w, -(-samples // len(w)))[:samples]
        out[i, : len(w)] = torch.from_numpy(w)
    return out, lengths


__all__ = ["AUDIO_SUFFIXES", "MAX_SECONDS", "audio_info", "decode_audio", "dct_matrix", "fit_length", "log_mel",
           "mel_filterbank", "mfcc", "resample"]
