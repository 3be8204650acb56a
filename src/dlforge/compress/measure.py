"""What a candidate is judged by, measured the same way for every candidate on this machine.

- the main metric on the run's test split (accuracy, micro F1 or RMSE of the first output; compress/variant.py);
- latency at batch 1: p50 and p95 of single-row forward passes through the candidate's runtime, after a warm-up,
  timed until `seconds` have passed (at least MIN_REPEATS passes), so a fast model gets many samples;
- throughput at batch 64: rows per second over back-to-back batches of 64 test rows, after a warm-up;
- size: the bytes of the file the runtime reads (model.safetensors for torch, the .onnx file(s) otherwise).
torch's intra-op threads are set to `threads` for the whole measurement and stated with every figure; the
inputs are encoded once, outside the timed loop, so the figures are the runtime's forward pass only.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from dlforge.artifact.inputs import from_table
from dlforge.artifact.predictor import Predictor
from dlforge.compress.passes import Candidate
from dlforge.compress.variant import main_metric
from dlforge.data.prepare import encode
from dlforge.data.table import Table

WARMUP = 10
MIN_REPEATS = 20
THROUGHPUT_BATCH = 64


@dataclass
class Measurement:
    name: str
    runtime: str
    metric_name: str
    metric: float
    p50_ms: float
    p95_ms: float
    rows_per_s_b64: float
    size_bytes: int
    threads: int
    notes: dict = field(default_factory=dict)

    @property
    def size_mb(self) -> float:
        return self.size_bytes / 1e6

    def row(self) -> dict:
        return {**{k: v for k, v in asdict(self).items() if k != "notes"}, "size_mb": round(self.size_mb, 4)}


def model_bytes(candidate: Candidate) -> int:
    """Bytes of what the candidate's runtime loads: `notes["model_file"]` when the pass names it, else
    model.safetensors (torch) or every *.onnx* file in the run directory (ONNX keeps large weights beside it)."""
    run_dir = Path(candidate.run_dir)
    if candidate.notes.get("model_file"):
        return (run_dir / candidate.notes["model_file"]).stat().st_size
    if candidate.runtime == "torch":
        return (run_dir / "model.safetensors").stat().st_size
    return sum(p.stat().st_size for p in run_dir.glob("*.onnx*") if p.is_file())


def _timed(run, x, *, seconds: float, min_repeats: int) -> list[float]:
    for _ in range(WARMUP):
        run(x)
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(times) < min_repeats or time.perf_counter() < deadline:
        start = time.perf_counter()
        run(x)
        times.append(time.perf_counter() - start)
    return times


def measure(candidate: Candidate, test: Table, *, threads: int, seconds: float = 0.5) -> Measurement:
    """Metric, latency (batch 1), throughput (batch 64) and size of one candidate."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        predictor = Predictor(candidate.run_dir, runtime=candidate.runtime)
        metric_name, metric, _ = main_metric(predictor.evaluate(test), predictor.signature)
        table = from_table(test, predictor.signature["inputs"])
        x = encode(table, predictor.inputs, None).x
        run = predictor.runtime.run
        one = {k: v[:1] for k, v in x.items()}
        rows = np.resize(np.arange(len(next(iter(x.values())))), THROUGHPUT_BATCH)  # repeats rows if fewer than 64
        batch = {k: v[torch.as_tensor(rows)] for k, v in x.items()}
        latency = np.asarray(_timed(run, one, seconds=seconds, min_repeats=MIN_REPEATS)) * 1000
        batch_times = _timed(run, batch, seconds=seconds, min_repeats=5)
    finally:
        torch.set_num_threads(previous)
    return Measurement(candidate.name, candidate.runtime, metric_name, metric, float(np.percentile(latency, 50)),
                       float(np.percentile(latency, 95)), THROUGHPUT_BATCH * len(batch_times) / sum(batch_times),
                       model_bytes(candidate), threads, dict(candidate.notes))


__all__ = ["Measurement", "measure", "model_bytes"]
