"""The audio front end's cost on the real clips: decode (soundfile) and log-mel/MFCC (torch ops), per clip.

Reads every WAV of $DLFORGE_DATA/sfx_0ad (776 clips, 16 kHz), then times, one after the other in this process:
decoding all files; cutting them to 3 s; log-mel (40 and 64 bands) and MFCC on the whole set in chunks;
resampling the set 16 kHz -> 22.05 kHz. Prints one Markdown table (best of --repeat runs) with the CPU.

    PYTHONPATH=src DLFORGE_DATA=../shared/data python benchmarks/audio.py [--repeat 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from dlforge.data.audio import decode_audio, fit_length, log_mel, mfcc, resample

    root = Path(os.environ.get("DLFORGE_DATA", "../shared/data")) / "sfx_0ad"
    files = sorted(root.glob("*/*/*.wav"))
    if not files:
        raise SystemExit(f"no clips under {root}")
    clips = [decode_audio(f)[0] for f in files]
    waves, _ = fit_length(clips, 48000, "repeat")
    seconds = sum(len(c) for c in clips) / 16000

    def features(n_mels: int, kind: str = "log_mel"):
        for start in range(0, len(waves), 256):
            x = log_mel(waves[start:start + 256], sample_rate=16000, n_fft=512, win=400, hop=160, n_mels=n_mels)
            if kind == "mfcc":
                mfcc(x, 20)

    rows = [
        ("decode all files (soundfile)", best(lambda: [decode_audio(f) for f in files], args.repeat)),
        ("cut/pad to 3 s (repeat)", best(lambda: fit_length(clips, 48000, "repeat"), args.repeat)),
        ("log-mel, 40 bands, 25/10 ms", best(lambda: features(40), args.repeat)),
        ("log-mel, 64 bands, 25/10 ms", best(lambda: features(64), args.repeat)),
        ("MFCC 20 of 64 bands", best(lambda: features(64, "mfcc"), args.repeat)),
        ("resample 16 -> 22.05 kHz (3 s clips)", best(lambda: [resample(waves[s:s + 256], 16000, 22050)
                                                              for s in range(0, len(waves), 256)], args.repeat)),
    ]
    from dlforge.core.machine import cpu_model

    cpu = cpu_model()
    print(f"{len(files)} clips, {seconds:.0f} s of audio; CPU {cpu}, torch {torch.__version__} "
          f"({torch.backends.cpu.get_cpu_capability()}), {args.threads} thread(s), load {os.getloadavg()[0]:.1f}; "
          f"best of {args.repeat}\n")
    print("| step | seconds (all clips) | ms per clip | × real time |")
    print("|---|---|---|---|")
    for name, t in rows:
        print(f"| {name} | {t:.3f} | {1000 * t / len(files):.2f} | {seconds / t:,.0f} |")


if __name__ == "__main__":
    main()
