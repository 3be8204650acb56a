"""Audio inputs: the front end's numbers, decoding of good and bad files, the feature's state, training,
prediction from files and the served upload limits."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import yaml

sf = pytest.importorskip("soundfile")

from dlforge.core.errors import DataError  # noqa: E402
from dlforge.data.audio import dct_matrix, log_mel, mel_filterbank, mfcc, resample  # noqa: E402

RATE = 8000


def tone(freq: float, seconds: float = 0.5, rate: int = RATE, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def wav_bytes(samples: np.ndarray, rate: int = RATE, fmt: str = "WAV") -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, samples, rate, format=fmt, subtype="PCM_16" if fmt == "WAV" else None)
    return buffer.getvalue()


# ---------------------------------------------------------------- the front end
def test_resample_keeps_a_tone_and_removes_what_the_new_rate_cannot_hold():
    x = torch.from_numpy(tone(440, 1.0, rate=44100))[None]
    y = resample(x, 44100, 16000)
    assert y.shape == (1, 16000)
    expected = torch.from_numpy(tone(440, 1.0, rate=16000))
    assert (y[0, 100:-100] - expected[100:-100]).abs().max() < 2e-3
    # 6 kHz is above the 4 kHz Nyquist limit of 8 kHz: band-limiting removes it instead of folding it to 2 kHz
    alias = resample(torch.from_numpy(tone(6000, 1.0, rate=16000))[None], 16000, 8000)
    assert alias[0, 100:-100].abs().max() < 0.01


def test_log_mel_peaks_in_the_band_of_the_tone_and_mfcc_is_an_orthonormal_dct():
    fb = mel_filterbank(512, 40, 16000)
    peaks = fb.max(0).values  # triangles peak at 1 between FFT bins: every band holds bins, none exceeds 1
    assert fb.shape == (257, 40) and bool((peaks <= 1).all()) and bool((peaks > 0.5).all())
    x = torch.from_numpy(tone(1000, 1.0, rate=16000))[None]
    feats = log_mel(x, sample_rate=16000, n_fft=512, win=400, hop=160, n_mels=40)
    assert feats.shape == (1, 40, 101)
    peak = int(feats[0, :, 50].argmax())
    centres = (fb * torch.arange(257)[:, None]).sum(0) / fb.sum(0) * 16000 / 512
    assert abs(float(centres[peak]) - 1000) < 150  # the band whose centre is nearest 1 kHz
    d = dct_matrix(40, 40)
    assert torch.allclose(d.T @ d, torch.eye(40), atol=1e-5)
    assert mfcc(feats, 13).shape == (1, 13, 101)


# ---------------------------------------------------------------- a tiny sound-folder data set
@pytest.fixture(scope="module")
def sound_folder(tmp_path_factory):
    """train/test folders of two classes: low tones and high tones, at two sample rates and lengths."""
    root = tmp_path_factory.mktemp("sounds")
    rng = np.random.default_rng(0)
    for split, n in (("train", 24), ("test", 8)):
        for label, base in (("low", 300), ("high", 2000)):
            folder = root / split / label
            folder.mkdir(parents=True)
            for i in range(n):
                rate = RATE if i % 3 else 16000  # a third at another rate: resampled on load
                freq = base * (1 + 0.2 * rng.random())
                clip = tone(freq, seconds=0.3 + 0.4 * rng.random(), rate=rate)
                sf.write(folder / f"{i:03d}.wav", clip + 0.01 * rng.standard_normal(len(clip)).astype(np.float32), rate)
    (root / "train" / "low" / "notes.txt").write_text("not a sound")
    return root


def recipe_for(folder, **prep) -> dict:
    return {
        "name": "tones",
        "data": {"source": str(folder), "split": {"val": 0.2, "test": "official"}},
        "inputs": [{"name": "audio", "type": "audio",
                    "preprocessing": {"sample_rate": RATE, "duration": 0.5, "n_mels": 32, "max_seconds": 5, **prep},
                    "encoder": {"name": "cnn1d", "channels": [16, 16], "kernel_sizes": [3]},
                    "augmentation": {"spec_augment": {"freq_masks": 1, "freq_width": 4, "time_masks": 1, "time_width": 5}}}],
        "outputs": [{"name": "label", "type": "category"}],
        "training": {"epochs": 8, "batch_size": 8, "optimizer": {"name": "adam", "lr": 0.01}, "seed": 0},
    }


def test_a_sound_folder_reads_as_an_audio_column_and_counts_other_files(sound_folder):
    from dlforge.data.readers import load_table

    table = load_table(str(sound_folder))
    assert set(table.columns) == {"audio", "label"}
    assert table.n_rows == 64 and sorted(set(table.split)) == ["test", "train"]
    assert any("non-audio file" in note for note in table.notes)


@pytest.fixture(scope="module")
def tones_run(sound_folder, tmp_path_factory):
    import dlforge

    out = tmp_path_factory.mktemp("runs") / "tones"
    result = dlforge.train(recipe_for(sound_folder), out=out)
    return out, result


@pytest.mark.slow
def test_tones_train_to_perfect_accuracy_and_predict_from_files(tones_run, sound_folder):
    import dlforge

    out, result = tones_run
    assert result.metrics["test"]["accuracy"] == 1.0
    audio_report = result.metrics["data"]["audio"]["audio"]
    assert audio_report["padded_shorter_than_duration"] > 0 and audio_report["cropped_longer_than_duration"] > 0
    predictor = dlforge.load(out)
    files = sorted((sound_folder / "test" / "high").glob("*.wav"))[:3]
    assert list(predictor.predict({"audio": [str(f) for f in files]})) == ["high"] * 3
    # bytes and an 8 kHz waveform array give the same answer as the file
    assert list(predictor.predict({"audio": files[0].read_bytes()})) == ["high"]
    samples, rate = sf.read(files[1], dtype="float32")
    assert rate == RATE  # file 001 is at the model's rate (000 at 16 kHz); arrays are taken as they are
    assert list(predictor.predict({"audio": samples})) == ["high"]


def test_feature_state_round_trips_and_transforms_identically(sound_folder):
    from dlforge.data.features.audio import AudioFeature
    from dlforge.data.readers import load_table
    from dlforge.recipe import Recipe

    recipe = Recipe.model_validate(recipe_for(sound_folder, features="mfcc", n_mfcc=13))
    table = load_table(str(sound_folder))
    values = table.columns["audio"][:10]
    fitted = AudioFeature(recipe.inputs[0], field_path="inputs.0").fit(values)
    sig = fitted.signature()
    assert sig["shape"] == [1, 13, 51] and sig["sample_rate"] == RATE
    state = yaml.safe_load(yaml.safe_dump(fitted.state()))  # JSON-like types only
    loaded = AudioFeature(recipe.inputs[0], field_path="inputs.0").load_state(state)
    a, b = fitted.transform(values), loaded.transform(values)
    assert a.shape == (10, 1, 13, 51) and torch.equal(a, b)
    assert abs(float(a.mean())) < 0.2 and abs(float(a.std()) - 1) < 0.2  # standardised per band on these rows


# ---------------------------------------------------------------- bad files
@pytest.mark.parametrize("content, reason", [
    (b"RIFF\x00\x00\x00\x00WAVEgarbage", "not a readable sound file"),
    (b"", "not a readable sound file"),
    ("zero", "no samples"),
])
def test_a_bad_file_fails_naming_it_or_is_skipped_and_counted(sound_folder, tmp_path, content, reason):
    import shutil

    from dlforge.data.prepare import prepare
    from dlforge.recipe import Recipe

    folder = tmp_path / "data"
    shutil.copytree(sound_folder, folder)
    bad = folder / "train" / "low" / "bad.wav"
    if content == "zero":
        sf.write(bad, np.zeros(0, dtype=np.float32), RATE)
    else:
        bad.write_bytes(content)
    with pytest.raises(DataError) as info:
        prepare(Recipe.model_validate(recipe_for(folder)))
    assert "bad.wav" in str(info.value) and reason in str(info.value) and "on_error: skip" in info.value.render()
    prepared = prepare(Recipe.model_validate(recipe_for(folder, on_error="skip")))
    assert prepared.report["audio"]["audio"]["skipped_bad_files"] == 1
    assert sum(prepared.report["rows"].values()) == 64  # the bad row dropped, every good one kept


def test_silent_clips_are_counted(tmp_path):
    from dlforge.data.features.audio import AudioFeature
    from dlforge.recipe import Recipe

    recipe = Recipe.model_validate(recipe_for(tmp_path))
    feature = AudioFeature(recipe.inputs[0], field_path="inputs.0")
    waves = np.stack([tone(440, 0.5), np.zeros(4000, dtype=np.float32)])
    feature.fit(waves)
    feature.transform(waves)
    assert feature.report == {"silent": 1}


def test_spec_augment_masks_bands_and_frames_reproducibly():
    from dlforge.data.augment import SpecAugment
    from dlforge.recipe.inputs import AudioAugmentation

    aug = SpecAugment(AudioAugmentation(spec_augment={"freq_masks": 2, "freq_width": 6, "time_masks": 2, "time_width": 10}))
    x = torch.ones(16, 1, 32, 50)
    a = aug(x, torch.Generator().manual_seed(1))
    b = aug(x, torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    zero_bands = (a == 0).all(dim=3).sum().item()
    zero_frames = (a == 0).all(dim=2).sum().item()
    assert zero_bands > 0 and zero_frames > 0
    assert (a == 0).float().mean() < 0.6  # masks, not erasure


# ---------------------------------------------------------------- serving
@pytest.mark.slow
def test_served_upload_predicts_and_refuses_long_or_unreadable_clips(tones_run, sound_folder):
    from tests.serve.conftest import app_client

    out, _ = tones_run
    clip = sorted((sound_folder / "test" / "low").glob("*.wav"))[0].read_bytes()
    with app_client(out) as client:
        ok = client.post("/v1/predict", files={"audio": ("clip.wav", clip, "audio/wav")})
        assert ok.status_code == 200, ok.text
        assert ok.json()["predictions"][0]["label"] == "low"
        long_clip = wav_bytes(np.zeros(RATE * 8, dtype=np.float32) + 0.1)  # 8 s > the recipe's 5 s limit
        too_long = client.post("/v1/predict", files={"audio": ("long.wav", long_clip, "audio/wav")})
        assert too_long.status_code == 413 and "at most 5 s" in too_long.json()["detail"]
        garbage = client.post("/v1/predict", files={"audio": ("x.wav", b"not a sound at all", "audio/wav")})
        assert garbage.status_code == 422 and "not a readable sound file" in garbage.text


def test_cli_predicts_a_wav_file(tones_run, sound_folder, capsys):
    from tests.conftest import main_ok

    out, _ = tones_run
    clip = sorted((sound_folder / "test" / "high").glob("*.wav"))[0]
    main_ok(["predict", str(out), str(clip)])
    assert "high" in capsys.readouterr().out


# ---------------------------------------------------------------- grouped split (a recording's takes stay together)
def test_grouped_split_keeps_each_group_in_one_split():
    from dlforge.data.split import split_rows

    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(40), 5).astype(str)  # 40 groups of 5 rows
    labels = np.where(np.arange(200) < 100, "a", "b").astype(object)
    rows = split_rows(200, official=None, labels=labels, val=0.2, test=0.25, seed=int(rng.integers(100)),
                      groups=groups)
    seen = {part: set(groups[r]) for part, r in rows.items()}
    assert not (seen["train"] & seen["val"]) and not (seen["train"] & seen["test"]) and not (seen["val"] & seen["test"])
    assert len(seen["test"]) == 10 and sum(len(r) for r in rows.values()) == 200
    assert set(labels[rows["test"]]) == {"a", "b"}  # stratified by each group's class


def test_group_column_with_empty_cells_is_refused(tmp_path):
    import pandas as pd

    from dlforge.data.prepare import read_table
    from dlforge.recipe import Recipe

    path = tmp_path / "t.csv"
    pd.DataFrame({"x": range(10), "g": ["a", "b", "", "c", "d", "e", "f", "g", "h", "i"], "y": [0, 1] * 5}).to_csv(path, index=False)
    recipe = Recipe.model_validate({"data": {"source": str(path), "split": {"group": "g"}},
                                    "inputs": [{"name": "x", "type": "number"}],
                                    "outputs": [{"name": "y", "type": "category"}]})
    with pytest.raises(DataError, match="group column 'g' has empty cells"):
        read_table(recipe)


def test_short_clips_pad_with_silence_or_repeat_and_long_ones_crop_at_the_centre():
    from dlforge.data.audio import fit_length

    clip = np.arange(1, 4, dtype=np.float32)  # 1, 2, 3
    silence, lengths = fit_length([clip, np.arange(10, dtype=np.float32)], 7)
    assert silence[0].tolist() == [1, 2, 3, 0, 0, 0, 0] and lengths.tolist() == [3, 7]
    assert silence[1].tolist() == [1, 2, 3, 4, 5, 6, 7]  # 10 samples cropped to the middle 7
    repeat, _ = fit_length([clip], 7, pad="repeat")
    assert repeat[0].tolist() == [1, 2, 3, 1, 2, 3, 1]
