"""Audio columns: sound files (or waveforms) to standardised log-mel or MFCC "images" (n, 1, bands, frames).

Files are decoded once, before the split (`prepare_audio_files`, as image files are), into waveforms at the
recipe's rate and duration, so a file that does not decode fails naming it, or drops its row with a count.
The spectral front end runs as tensor ops on chunks of clips (data/audio.py); per-band mean and standard
deviation are fitted on the training split and stored, so `predict` and `serve` prepare a clip exactly as
training did. The output keeps a channel axis of 1, so 2-D encoders (cnn, resnet) read it as an image and
1-D encoders (cnn1d, gru, lstm, transformer) read the bands as channels over frames.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated, Any, Union

import numpy as np
import torch
from pydantic import BeforeValidator, Field, WithJsonSchema

from dlforge.core.errors import DataError, PredictError
from dlforge.data.audio import decode_audio, fit_length, log_mel, mfcc, resample
from dlforge.data.features.base import Feature, input_features, is_missing
from dlforge.data.features.wire import InputKind, input_kinds, sent_file
from dlforge.data.table import Table

CHUNK = 256  # clips per spectral chunk: 256 x 3 s at 16 kHz is 49 MB of float32 waveform


def clip_samples(prep) -> int:
    return int(round(prep.duration * prep.sample_rate))


def frame_sizes(prep) -> tuple[int, int, int]:
    """(n_fft, window, hop) in samples: the window rounded to samples, the FFT the next power of two."""
    win = max(16, int(round(prep.window_ms * prep.sample_rate / 1000)))
    hop = max(1, int(round(prep.hop_ms * prep.sample_rate / 1000)))
    return 1 << (win - 1).bit_length(), win, hop


def load_clip(item, prep) -> np.ndarray:
    """One file (path or bytes) as mono float32 at the recipe's rate; ValueError with a reason if it cannot be."""
    samples, rate = decode_audio(item, max_seconds=prep.max_seconds)
    if rate != prep.sample_rate:
        samples = resample(torch.from_numpy(samples)[None], rate, prep.sample_rate)[0].numpy()
    return samples


def _load_all(values: np.ndarray, prep, workers: int) -> list[np.ndarray | ValueError]:
    def one(item):
        if is_missing(item):
            return ValueError("no file given (the cell is empty)")
        try:
            return load_clip(item, prep)
        except FileNotFoundError:
            return ValueError("file not found")
        except ValueError as exc:
            return exc

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:  # libsndfile releases the GIL while it reads
        return list(pool.map(one, values.tolist(), chunksize=16))


def prepare_audio_files(recipe, table: Table) -> tuple[Table, dict]:
    """Decode every audio-file column of the recipe into (n, samples) waveforms before the split.

    A file that does not decode fails naming it (`on_error: error`), or its row is dropped and counted (`skip`);
    silent clips and clips cropped to the duration are counted. Returns the new table and a report per input."""
    from dlforge.data.images.files import is_file_column, resolve_paths

    reports: dict[str, dict] = {}
    for i, feature in enumerate(recipe.inputs):
        if feature.type != "audio" or not is_file_column(table.columns[feature.name]):
            continue
        field_path, prep = f"inputs.{i}", feature.preprocessing
        values = resolve_paths(table.columns[feature.name], table.root)
        loaded = _load_all(values, prep, recipe.data.workers)
        bad = [j for j, clip in enumerate(loaded) if isinstance(clip, ValueError)]
        report: dict = {}
        if bad and prep.on_error == "error":
            j = bad[0]
            raise DataError(f"audio file {values[j]} (row {j}) cannot be used: {loaded[j]}"
                            + (f" ({len(bad) - 1} more such file(s))" if len(bad) > 1 else ""), where=field_path,
                            hint="fix or remove the file, or set preprocessing.on_error: skip to drop such rows "
                                 "(they are counted)")
        if bad:
            report["skipped_bad_files"] = len(bad)
            report["skipped_examples"] = [f"{values[j]}: {loaded[j]}" for j in bad[:3]]
            keep = np.setdiff1d(np.arange(table.n_rows), bad)
            table, loaded = table.take(keep), [loaded[j] for j in keep]
        if table.n_rows == 0:
            raise DataError(f"no audio file in '{feature.name}' could be decoded", where=field_path)
        samples = clip_samples(prep)
        waves, lengths = fit_length(loaded, samples, prep.pad)
        durations = np.array([len(c) for c in loaded]) / prep.sample_rate
        report["cropped_longer_than_duration"] = int((durations > prep.duration).sum())
        report["padded_shorter_than_duration"] = int((durations < prep.duration).sum())
        report["silent"] = int((waves.abs().amax(1) == 0).sum().item())
        report["seconds"] = {"min": round(float(durations.min()), 3), "median": round(float(np.median(durations)), 3),
                             "max": round(float(durations.max()), 3)}
        table.columns[feature.name] = waves.numpy()
        reports[feature.name] = report
    return table, reports


@input_features.register("audio")
class AudioFeature(Feature):
    def _waves(self, values: np.ndarray) -> torch.Tensor:
        """(n, samples) float32 at the recipe's rate: waveform arrays pass through, files are decoded here."""
        prep = self.config.preprocessing
        if values.dtype != object and values.dtype.kind not in "US":
            array = np.asarray(values, dtype=np.float32)
            if array.ndim == 1:
                array = array[None]
            if array.ndim != 2:
                raise DataError(f"audio '{self.name}' arrays must be (n, samples); got shape {array.shape}",
                                where=self.field_path)
            return fit_length(list(array), clip_samples(prep), prep.pad)[0]
        clips = []
        for i, item in enumerate(values.tolist()):
            if isinstance(item, np.ndarray):
                clips.append(item.astype(np.float32).reshape(-1))
                continue
            try:
                clips.append(load_clip(item, prep))
            except (ValueError, FileNotFoundError) as exc:
                raise DataError(f"audio in '{self.name}' row {i} cannot be used: {exc}", where=self.field_path,
                                hint="send a WAV, FLAC or OGG file with at least one sample") from None
        return fit_length(clips, clip_samples(prep), prep.pad)[0]

    def _spectral(self, waves: torch.Tensor) -> torch.Tensor:
        """(n, samples) to (n, bands, frames), unscaled."""
        prep = self.config.preprocessing
        n_fft, win, hop = frame_sizes(prep)
        parts = []
        for start in range(0, len(waves), CHUNK):
            feats = log_mel(waves[start:start + CHUNK], sample_rate=prep.sample_rate, n_fft=n_fft, win=win, hop=hop,
                            n_mels=prep.n_mels)
            parts.append(mfcc(feats, prep.n_mfcc) if prep.features == "mfcc" else feats)
        if not parts:
            bands = prep.n_mfcc if prep.features == "mfcc" else prep.n_mels
            return torch.empty(0, bands, clip_samples(prep) // hop + 1)
        return torch.cat(parts)

    def fit(self, values):
        feats = self._spectral(self._waves(values))
        self.bands_, self.frames_ = int(feats.shape[1]), int(feats.shape[2])
        self.mean_ = feats.mean((0, 2)).tolist()
        self.std_ = feats.std((0, 2)).clamp(min=1e-5).tolist()
        return self

    def transform(self, values):
        waves = self._waves(values)
        silent = waves.abs().amax(1) == 0 if len(waves) else torch.zeros(0, dtype=torch.bool)
        self.count("silent", int(silent.sum()))
        feats = self._spectral(waves)
        mean = torch.tensor(self.mean_).view(1, -1, 1)
        std = torch.tensor(self.std_).view(1, -1, 1)
        return ((feats - mean) / std).unsqueeze(1)

    def state(self):
        prep = self.config.preprocessing  # the front end's protocol, so model.json alone says how clips are prepared
        return {"bands": self.bands_, "frames": self.frames_, "mean": self.mean_, "std": self.std_,
                "sample_rate": prep.sample_rate, "duration": prep.duration, "pad": prep.pad, "features": prep.features}

    def load_state(self, state):
        self.bands_, self.frames_ = state["bands"], state["frames"]
        self.mean_, self.std_ = state["mean"], state["std"]
        return self

    def signature(self):
        prep = self.config.preprocessing
        return {"type": "audio", "dtype": "audio", "shape": [1, self.bands_, self.frames_], "channels": self.bands_,
                "length": self.frames_, "sample_rate": prep.sample_rate, "duration": prep.duration,
                "max_seconds": prep.max_seconds}


# ---------------------------------------------------------------- at the edges: API, Python callers, init
class ClipTooLong(ValueError):
    """A clip over the limit: the server answers 413, like an image with too many pixels."""

    status = 413


@input_kinds.register("audio")
class AudioKind(InputKind):
    """A sound file (path, upload, base64), decoded, resampled and cut as in training."""

    file_input = True

    def api_field(self, name, sig):
        def parse(value: Any) -> Union[bytes, np.ndarray]:
            data = sent_file(value, "sound file")
            if data is not None:
                return data
            raise ValueError("a sound is a base64 string of a WAV, FLAC or OGG file (or a data: URL)")

        schema = {"type": "string", "contentEncoding": "base64", "contentMediaType": "audio/*", "minLength": 1,
                  "description": f"A sound file's bytes, base64-encoded (WAV, FLAC, OGG; resampled to "
                                 f"{sig.get('sample_rate', '?')} Hz, cut or padded to {sig.get('duration', '?')} s)."}
        return Annotated[Any, BeforeValidator(parse), WithJsonSchema(schema)], Field(..., alias=name)

    def form_part(self, sig):
        return {"type": "string", "format": "binary", "description": "The sound file (WAV, FLAC, OGG)."}

    def check_upload(self, value, sig) -> None:
        """From the header alone: ClipTooLong (413) past the model's limit, ValueError (422) for no sound file."""
        from dlforge.data.audio import audio_info

        if not isinstance(value, bytes):
            return
        try:
            frames, rate = audio_info(value)
        except Exception:  # libsndfile raises its own types for garbage; the message is what the client needs
            raise ValueError("not a readable sound file (send WAV, FLAC or OGG)") from None
        if frames == 0:
            raise ValueError("the clip has no samples (0 s)")
        limit = float(sig.get("max_seconds") or 600)
        if frames > limit * rate:
            raise ClipTooLong(f"the clip lasts {frames / rate:.1f} s; this model accepts at most {limit:g} s")

    def python_column(self, value, sig, name):
        if isinstance(value, (str, Path, bytes)):
            return np.array([value], dtype=object)
        if isinstance(value, (list, tuple)) and len(value) and isinstance(value[0], (str, Path, bytes)):
            return np.array([str(v) if isinstance(v, Path) else v for v in value], dtype=object)
        array = np.asarray(value)
        if array.dtype.kind not in "biuf" or array.ndim not in (1, 2):
            raise PredictError(f"input '{name}' expects sound file paths or waveforms (n, samples) at "
                               f"{sig.get('sample_rate')} Hz; got {array.dtype} values of shape {array.shape}")
        return array[None] if array.ndim == 1 else array

    def table_column(self, values, root):
        from dlforge.data.images.files import is_file_column, resolve_paths

        return resolve_paths(values, root) if is_file_column(values) else values

    def sample(self, sig):
        rate, seconds = int(sig.get("sample_rate", 16000)), float(sig.get("duration", 1.0))
        t = np.arange(int(rate * seconds)) / rate
        return (0.1 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)  # a quiet A: silence would be counted

    def init_entry(self, values):
        return {"preprocessing": {"sample_rate": 16000, "duration": 3.0, "features": "log_mel", "n_mels": 64},
                "encoder": {"name": "cnn", "channels": [32, 64, 128], "padding": "same", "batch_norm": True,
                            "global_pool": True, "dense": []},
                "augmentation": {"spec_augment": {"freq_masks": 2, "freq_width": 8, "time_masks": 2, "time_width": 20}}}


__all__ = ["AudioFeature", "AudioKind", "ClipTooLong", "prepare_audio_files"]
