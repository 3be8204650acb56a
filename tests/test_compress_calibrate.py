"""Activation ranges for static int8 (compress/calibrate.py) and the bias correction of int8 weights
(compress/bias_correction.py), on hand-built ONNX graphs of a few nodes."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from dlforge.compress.bias_correction import apply_shifts, weight_error_shifts  # noqa: E402
from dlforge.compress.calibrate import SETTINGS, calibrate, entropy_threshold, read_ranges  # noqa: E402


def _conv_relu(tmp_path):
    """x (N, 3, 8, 8) -> Conv 3x3 (3 -> 4) -> y -> Relu -> out."""
    w = np.random.default_rng(0).normal(size=(4, 3, 3, 3)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv", kernel_shape=[3, 3], pads=[1] * 4),
         helper.make_node("Relu", ["y"], ["out"], name="relu")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3, 8, 8])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.zeros(4, np.float32), "b")])
    path = tmp_path / "conv.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def _outlier_rows(n=37):
    """Normal pixels with 5 planted outliers of 60 (about 15 standard deviations): an outlier-heavy activation."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(n, 3, 8, 8)).astype(np.float32)
    x.flat[rng.choice(x.size, 5, replace=False)] = 60.0
    return {"x": x}


def test_entropy_clips_an_outlier_heavy_activation_inside_the_minmax_range(tmp_path):
    """onnxruntime's own entropy calibrator in quantize_static (128 bins, 128 quantized bins) returned the minmax
    range; with 2048 bins the KL threshold drops the outliers: the input's range shrinks from 60 to about 4."""
    path, x = _conv_relu(tmp_path), _outlier_rows()  # 37 rows: batches of 16, 16 and 5 (uneven batches work)
    minmax_cache, minmax = calibrate(path, x, method="minmax", op_types=["Conv", "Relu"], folder=tmp_path)
    entropy_cache, entropy = calibrate(path, x, method="entropy", op_types=["Conv", "Relu"], folder=tmp_path)
    low, high = read_ranges(minmax_cache), read_ranges(entropy_cache)
    assert set(low) == set(high) == {"x", "y", "out"}
    assert low["x"] == pytest.approx((float(x["x"].min()), 60.0))
    for name in low:  # inside the observed range, never wider
        assert low[name][0] <= high[name][0] <= high[name][1] <= low[name][1]
    assert high["x"][1] < 5.0  # the 5 outliers (of 7,104 values) are clipped; the bulk of the normal values stays
    assert high["x"][1] > 3.0
    assert high["y"][1] < 0.75 * low["y"][1]
    assert high["out"] == pytest.approx(low["out"])  # a graph output keeps its whole range (a top logit is a tail)
    assert entropy["settings"] == SETTINGS["entropy"] == {"num_bins": 2048, "num_quantized_bins": 128, "symmetric": False}
    assert entropy["tensors"] == 3 and entropy["clipped_tensors"] == 2 and entropy["outputs_full_range"] == ["out"]
    assert entropy["median_kept_fraction_of_range"] < 0.6
    assert minmax["clipped_tensors"] == 0


def test_percentile_cuts_each_tail_separately(tmp_path):
    path, x = _conv_relu(tmp_path), _outlier_rows()
    cache, summary = calibrate(path, x, method="percentile", op_types=["Conv", "Relu"], folder=tmp_path)
    ranges = read_ranges(cache)
    assert summary["settings"] == {"num_bins": 2048, "percentile": 99.999, "symmetric": False}
    # 0.0005 % of 7,104 values is less than one value: the outlier stays (to a histogram bin), the low end is kept
    assert ranges["x"][0] == pytest.approx(float(x["x"].min())) and 59.0 < ranges["x"][1] <= 60.0
    assert ranges["out"][0] == 0.0


def test_the_kl_search_equals_onnxruntimes(tmp_path):
    """entropy_threshold is onnxruntime's get_entropy_threshold with its loops vectorized: same thresholds."""
    from onnxruntime.quantization.calibrate import HistogramCollector

    rng = np.random.default_rng(2)
    for data in (rng.laplace(size=20_000), np.abs(rng.standard_t(3, size=20_000)), rng.normal(size=5_000) + 0.5):
        data = data.astype(np.float32)
        collector = HistogramCollector(method="entropy", symmetric=False, num_bins=512, num_quantized_bins=64,
                                       percentile=99.99, scenario="same")
        collector.collect({"t": [data]})
        histogram = collector.histogram_dict["t"]
        expected = collector.get_entropy_threshold(histogram, 64)
        assert tuple(map(float, entropy_threshold(histogram, 64))) == tuple(map(float, expected))


def test_an_unknown_method_and_no_rows_are_clear_errors(tmp_path):
    from dlforge.core.errors import DlforgeError

    path = _conv_relu(tmp_path)
    with pytest.raises(DlforgeError, match="unknown calibration 'median'"):
        calibrate(path, _outlier_rows(), method="median", op_types=["Conv"], folder=tmp_path)
    with pytest.raises(DlforgeError, match="no calibration rows"):
        calibrate(path, {"x": np.zeros((0, 3, 8, 8), np.float32)}, method="minmax", op_types=["Conv"], folder=tmp_path)


def _depthwise_gemm():
    """x (N, 3, 6, 6) -> depthwise Conv 3x3 (groups 3, no bias) -> GlobalAveragePool -> Flatten -> Gemm (3 -> 2)."""
    rng = np.random.default_rng(3)
    inits = [numpy_helper.from_array(rng.normal(size=(3, 1, 3, 3)).astype(np.float32), "dw"),
             numpy_helper.from_array(rng.normal(size=(2, 3)).astype(np.float32), "fc"),
             numpy_helper.from_array(np.array([0.5, -0.5], np.float32), "fc_b")]
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "dw"], ["d"], name="depthwise", kernel_shape=[3, 3], group=3),
         helper.make_node("GlobalAveragePool", ["d"], ["p"], name="pool"),
         helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
         helper.make_node("Gemm", ["f", "fc", "fc_b"], ["out"], name="head", transB=1)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3, 6, 6])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _with_weights(model, weights):
    copy = onnx.ModelProto.FromString(model.SerializeToString())
    for init in copy.graph.initializer:
        if init.name in weights:
            init.CopyFrom(numpy_helper.from_array(weights[init.name], init.name))
    return copy


def _fake_int8(model):
    """A stand-in for the quantizer's output: each weight replaced by DequantizeLinear(int8, per-channel scale)."""
    q = onnx.ModelProto.FromString(model.SerializeToString())
    inits = {i.name: numpy_helper.to_array(i) for i in q.graph.initializer}
    nodes = []
    for name in ("dw", "fc"):
        w = inits[name]
        scale = (np.abs(w).reshape(len(w), -1).max(axis=1) / 7).astype(np.float32)  # a coarse 4-bit-like grid
        ints = np.clip(np.round(w / scale.reshape(-1, *[1] * (w.ndim - 1))), -127, 127).astype(np.int8)
        q.graph.initializer.extend([numpy_helper.from_array(ints, f"{name}_q"),
                                    numpy_helper.from_array(scale, f"{name}_scale"),
                                    numpy_helper.from_array(np.zeros(len(w), np.int8), f"{name}_zero")])
        nodes.append(helper.make_node("DequantizeLinear", [f"{name}_q", f"{name}_scale", f"{name}_zero"],
                                      [f"{name}_deq"], name=f"{name}_dq", axis=0))
    for node in q.graph.node:
        node.input[:] = [f"{i}_deq" if i in ("dw", "fc") else i for i in node.input]
    body = list(q.graph.node)
    del q.graph.node[:]
    q.graph.node.extend(nodes + body)
    return q


def _run(model, x):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def test_bias_correction_measures_the_mean_shift_of_int8_weights_and_takes_it_off_the_bias():
    model = _depthwise_gemm()
    qmodel = _fake_int8(model)
    x = (np.random.default_rng(4).random((20, 3, 6, 6)) + 1.0).astype(np.float32)  # mean 1.5: a shift to correct
    shifts = weight_error_shifts(model, qmodel, {"x": x}, threads=1)
    assert set(shifts) == {"depthwise", "head"}
    # expected: the fp32 layer with (int8 weight - fp32 weight) on the fp32 inputs, averaged over rows and positions
    inits = {i.name: numpy_helper.to_array(i) for i in qmodel.graph.initializer}
    error_dw = (inits["dw_q"].astype(np.float32) * inits["dw_scale"].reshape(3, 1, 1, 1)
                - numpy_helper.to_array(model.graph.initializer[0]))
    patches = np.lib.stride_tricks.sliding_window_view(x, (3, 3), axis=(2, 3))  # (N, 3, 4, 4, 3, 3)
    expected_dw = np.einsum("nchwij,cij->c", patches, error_dw[:, 0]) / (20 * 16)
    np.testing.assert_allclose(shifts["depthwise"], expected_dw, rtol=1e-4, atol=1e-6)
    assert shifts["depthwise"].shape == (3,) and shifts["head"].shape == (2,)
    # corrected: the int8 model's mean output error on these rows goes to ~0 (the head sees corrected inputs too)
    fp32 = _run(model, x)
    before = (_run(qmodel, x) - fp32).mean(axis=0)
    corrected = onnx.ModelProto.FromString(model.SerializeToString())
    assert apply_shifts(corrected, shifts) == 2
    dw_node = next(n for n in corrected.graph.node if n.name == "depthwise")
    assert len(dw_node.input) == 3  # the bias-less depthwise conv got a bias
    corrected_q = _fake_int8(corrected)
    after = (_run(corrected_q, x) - fp32).mean(axis=0)
    assert np.abs(after).max() < 0.05 * np.abs(before).max()
