"""Activation ranges for static int8, calibrated once per `dlforge quantize` with settings dlforge chooses.

onnxruntime's `quantize_static` builds its own calibrator when handed a data reader, and passes it no histogram
settings: its entropy calibrator then has 128 histogram bins and 128 quantized bins, so the only KL threshold it
can consider is the whole observed range, and `--calibration entropy` gave exactly the minmax ranges (onnxruntime
1.32; benchmarks/compress.md, round 3). Here the calibrator is built with `create_calibrator` and explicit settings
(`SETTINGS`), its ranges are written as onnxruntime's own calibration cache (`save_tensors_data`), and every
`quantize_static` call of the run (the variant, each sensitivity probe, each fallback step) reads that cache
(`calibration_cache_path`): one calibration pass per quantize instead of one per call. Calibration ranges do not
depend on which layers are later excluded (the calibrator runs the fp32 graph), so reusing them is exact.

- minmax: the observed min and max of each tensor.
- entropy: the TensorRT recipe (Migacz, "8-bit inference with TensorRT", GTC 2017): a 2048-bin histogram over
  [-max|x|, max|x|], and the clipping threshold whose 128-bin quantized distribution is closest (KL divergence) to
  the clipped one. The threshold lies inside the observed range; heavy-tailed tensors are clipped.
- percentile: the range that keeps 99.999 % of the values (0.0005 % cut on each side) of a 2048-bin histogram of
  the signed values (onnxruntime's default is a histogram of |x|, symmetric; dlforge's activations are uint8 and
  asymmetric, so the two tails are cut separately).

The graph's outputs keep their observed min..max under every method: a classifier's logits are quantized too (the
last Gemm's output), and its top logit is exactly the tail a clipping threshold cuts.

The histograms are streamed batch by batch (one `collect_data` per batch): memory holds one batch of activations,
not the whole calibration set, and rows need not divide into equal batches (onnxruntime's one-shot collection
stacks all batches and fails on a shorter last one).
"""

from __future__ import annotations

import contextlib
import io
import time
from pathlib import Path

import numpy as np

from dlforge.core.errors import DlforgeError

# The calibrator's settings per method (create_calibrator's extra_options; `symmetric` is the tensor range's).
SETTINGS = {
    "minmax": {"symmetric": False},
    "entropy": {"num_bins": 2048, "num_quantized_bins": 128, "symmetric": False},
    "percentile": {"num_bins": 2048, "percentile": 99.999, "symmetric": False},
}
BATCH = 16  # calibration rows per forward pass


def _method(q, name: str):
    return {"minmax": q.CalibrationMethod.MinMax, "entropy": q.CalibrationMethod.Entropy,
            "percentile": q.CalibrationMethod.Percentile}[name]


class _OneBatch:
    """A CalibrationDataReader over one batch (the calibrator collects and merges per batch)."""

    def __init__(self, batch: dict[str, np.ndarray]):
        self.batch = batch

    def get_next(self):
        batch, self.batch = self.batch, None
        return batch


def calibrate(float_path: Path, x: dict[str, np.ndarray], *, method: str, op_types: list[str], folder: Path,
              settings: dict | None = None) -> tuple[Path, dict]:
    """Calibrate `float_path` on rows `x`; returns (onnxruntime calibration cache path, summary for the report).

    The summary: method, settings, seconds, how many tensors were calibrated and how many of them got a range
    narrower than their observed min..max (entropy/percentile clip; minmax never does)."""
    from onnxruntime import quantization as q
    from onnxruntime.quantization.calibrate import TensorData, TensorsData, create_calibrator, save_tensors_data

    if method not in SETTINGS:
        raise DlforgeError(f"unknown calibration '{method}'; known: {', '.join(SETTINGS)}", where="--calibration")
    options = {**SETTINGS[method], **(settings or {})}
    n = len(next(iter(x.values())))
    if n == 0:
        raise DlforgeError("no calibration rows", where="--calibration-rows", hint="calibrate on at least one row")
    started = time.perf_counter()
    quiet = io.StringIO()  # onnxruntime's histogram calibrator prints progress lines
    with contextlib.redirect_stdout(quiet):
        calibrator = create_calibrator(Path(float_path), op_types, augmented_model_path=str(folder / "calibrate.onnx"),
                                       calibrate_method=_method(q, method), extra_options=options)
        observed: dict[str, list[float]] = {}
        for start in range(0, n, BATCH):
            batch = {k: v[start:start + BATCH] for k, v in x.items()}
            calibrator.collect_data(_OneBatch(batch))
        if method != "minmax":  # the observed extremes, from the histograms the collector kept
            for name, hist in calibrator.collector.histogram_dict.items():
                observed[name] = [float(hist[2]), float(hist[3])]
        if method == "entropy":  # onnxruntime's KL search, vectorized (its loop took ~2.5 s per tensor here)
            ranges = TensorsData(q.CalibrationMethod.Entropy, {
                name: (*entropy_threshold(hist, options["num_quantized_bins"]), hist[0], hist[1])
                for name, hist in calibrator.collector.histogram_dict.items()})
        else:
            ranges = calibrator.compute_data()
    if not isinstance(ranges, TensorsData):
        raise DlforgeError(f"onnxruntime's {method} calibrator returned {type(ranges).__name__}, not ranges")
    del calibrator
    # The graph's outputs keep their whole observed range: a classifier's top logit is the tail that a KL or
    # percentile threshold cuts. (On EfficientNet transfer this alone did not rescue entropy: its error comes from
    # the clipped head features; benchmarks/compress.md, round 10.)
    import onnx

    full = sorted({o.name for o in onnx.load(str(float_path), load_external_data=False).graph.output}
                  & set(observed) & set(ranges.data))
    for name in full:
        data = ranges[name]
        ranges[name] = TensorData(lowest=np.array(observed[name][0], np.float32),
                                  highest=np.array(observed[name][1], np.float32), hist=data.hist, bins=data.bins)
        observed.pop(name)
    cache = folder / f"calibration-{method}.json"
    save_tensors_data(ranges, cache)
    clipped = []
    for name, lo_hi in observed.items():
        lo, hi = (_scalar(v) for v in ranges[name].range_value)
        if lo > lo_hi[0] + 1e-12 * abs(lo_hi[0]) or hi < lo_hi[1] - 1e-12 * abs(lo_hi[1]):
            span = lo_hi[1] - lo_hi[0]
            clipped.append((hi - lo) / span if span > 0 else 1.0)
    summary = {"method": method, "settings": options, "tensors": len(ranges.data),
               "clipped_tensors": len(clipped), "outputs_full_range": full,
               "median_kept_fraction_of_range": float(np.median(clipped)) if clipped else 1.0,
               "seconds": round(time.perf_counter() - started, 2)}
    return cache, summary


def entropy_threshold(histogram: tuple, num_quantized_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """The (low, high) clipping range of minimal KL divergence: onnxruntime 1.32's
    `HistogramCollector.get_entropy_threshold` (same candidates, same merging into quantized bins, same integer
    expansion, same smoothing and tie-breaking; tests/test_compress_calibrate.py checks equality), with its per-bin
    Python loops as array operations. `histogram`: (counts, edges, min, max, ...) over a range symmetric about 0."""
    from onnxruntime.quantization.calibrate import entropy
    from onnxruntime.quantization.quant_utils import smooth_distribution

    hist, edges = histogram[0], histogram[1]
    n_bins = hist.size
    zero = n_bins // 2
    half = num_quantized_bins // 2
    below = np.concatenate([[0], np.cumsum(hist)])  # below[k] = sum(hist[:k])
    total = below[-1]
    best, best_div = None, None
    for i in range(half, zero + 1):
        start, end = zero - i, min(zero + i + 1, n_bins)
        sliced = hist[start:end]
        p = sliced.copy()
        p[0] += below[start]
        p[-1] += total - below[end]
        merged = sliced.size // num_quantized_bins
        body = merged * num_quantized_bins
        quantized = sliced[:body].reshape(num_quantized_bins, merged).sum(axis=1)
        quantized[-1] += sliced[body:].sum()
        norm = (p[:body] != 0).reshape(num_quantized_bins, merged).sum(axis=1)
        q = np.zeros(p.size, dtype=np.int64)  # onnxruntime assigns quantized / norm into an int64 array
        q[:body] = np.repeat(np.where(norm != 0, quantized / np.maximum(norm, 1), 0), merged).astype(np.int64)
        p_s, q_s = smooth_distribution(p), smooth_distribution(q)
        div = np.inf if p_s is None or q_s is None else float(np.array(entropy(p_s, q_s), dtype=edges.dtype))
        if best_div is None or div < best_div:
            best, best_div = (edges[start], edges[end]), div
    low, high = best
    if low < histogram[2]:
        low = histogram[2]
    if high > histogram[3]:
        high = histogram[3]
    return low, high


def read_ranges(cache: Path) -> dict[str, tuple[float, float]]:
    """{tensor: (low, high)} from a calibration cache written by `calibrate`."""
    from onnxruntime.quantization.calibrate import load_tensors_data

    return {name: tuple(_scalar(v) for v in data.range_value) for name, data in load_tensors_data(cache).items()}


def _scalar(value) -> float:
    return float(np.asarray(value).reshape(-1)[0])  # the minmax calibrator keeps shape (1,) arrays


__all__ = ["BATCH", "SETTINGS", "calibrate", "entropy_threshold", "read_ranges"]
