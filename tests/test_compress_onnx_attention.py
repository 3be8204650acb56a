"""The rewrites of onnxruntime-fused transformer graphs (compress/onnx_export_attention.py), on tiny hand-built graphs:
com.microsoft Attention -> QKV MatMul + ONNX Attention (same values, padding masked), BiasGelu -> FastGelu, and the op
types dynamic int8 then quantizes."""

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from dlforge.compress.onnx_export_attention import ONNX_ATTENTION_OPSET, fast_gelu, onnx_attention  # noqa: E402
from dlforge.compress.quantize import dynamic_ops  # noqa: E402

HIDDEN, HEADS, BATCH, LENGTH = 8, 2, 3, 5


def attention_graph(**attributes):
    """x (B, S, 8) and a 0/1 mask (B, S) -> lengths (ReduceSum, keepdims 0) -> com.microsoft Attention, 2 heads."""
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.normal(size=(HIDDEN, 3 * HIDDEN)).astype(np.float32), "qkv_weight")
    bias = numpy_helper.from_array(rng.normal(size=3 * HIDDEN).astype(np.float32), "qkv_bias")
    axes = numpy_helper.from_array(np.array([1], np.int64), "axes")
    nodes = [helper.make_node("ReduceSum", ["mask", "axes"], ["lengths"], keepdims=0),
             helper.make_node("Attention", ["x", "qkv_weight", "qkv_bias", "lengths"], ["y"], name="attention_0",
                              domain="com.microsoft", num_heads=HEADS, **attributes)]
    graph = helper.make_graph(nodes, "attention", [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "length", HIDDEN]),
        helper.make_tensor_value_info("mask", TensorProto.INT32, ["batch", "length"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "length", HIDDEN])], [weight, bias, axes])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20), helper.make_opsetid("com.microsoft", 1)])


def run(model, feeds):
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def test_attention_becomes_qkv_matmul_and_onnx_attention_with_the_same_values():
    model = attention_graph()
    x = np.random.default_rng(1).normal(size=(BATCH, LENGTH, HIDDEN)).astype(np.float32)
    mask = np.ones((BATCH, LENGTH), np.int32)
    mask[1, 3:] = 0  # right padding: rows of 5, 3 and 1 tokens
    mask[2, 1:] = 0
    feeds = {"x": x, "mask": mask}
    before = run(model, feeds)
    assert onnx_attention(model) == 1
    onnx.checker.check_model(model)
    ops = [(n.op_type, n.domain) for n in model.graph.node]
    assert ("Attention", "com.microsoft") not in ops and ops.count(("MatMul", "")) == 3 and ("Split", "") not in ops
    assert {i.name for i in model.graph.initializer} & {"qkv_weight", "qkv_bias"} == set()  # the packed ones go
    # One If per layer: the ONNX Attention without a mask when no row is padded, with the mask otherwise.
    (branch,) = [n for n in model.graph.node if n.op_type == "If"]
    inputs = {a.name: [list(node.input) for node in a.g.node if node.op_type == "Attention"] for a in branch.attribute}
    assert len(inputs["then_branch"][0]) == 3 and len(inputs["else_branch"][0]) == 4
    assert {o.version for o in model.opset_import if o.domain == ""} == {ONNX_ATTENTION_OPSET}
    after = run(model, feeds)
    np.testing.assert_allclose(after, before, atol=1e-5)
    unpadded = {"x": x, "mask": np.ones_like(mask)}  # the other branch: no row padded
    np.testing.assert_allclose(run(model, unpadded), run(attention_graph(), unpadded), atol=1e-5)
    # The padding is masked: a padded key changes nothing for the real positions of a shorter row.
    x2 = x.copy()
    x2[2, 1:] = 100.0
    assert np.allclose(run(model, {"x": x2, "mask": mask})[2, 0], after[2, 0], atol=1e-5)
    assert onnx_attention(model) == 0  # nothing left to rewrite


def test_an_attention_it_does_not_take_is_left_as_it_was():
    model = attention_graph(unidirectional=1)
    assert onnx_attention(model) == 0
    assert [n.op_type for n in model.graph.node] == ["ReduceSum", "Attention"]
    assert {o.version for o in model.opset_import if o.domain == ""} == {20}


def test_dynamic_int8_quantizes_the_qkv_matmul_not_the_onnx_attention():
    model = attention_graph()
    assert "Attention" in dynamic_ops(model)  # com.microsoft Attention -> QAttention, as before
    onnx_attention(model)
    assert "Attention" not in dynamic_ops(model) and "MatMul" in dynamic_ops(model)


def test_bias_gelu_becomes_fast_gelu_within_the_tanh_approximation():
    from math import erf

    width = 16
    rng = np.random.default_rng(0)
    bias = numpy_helper.from_array(rng.normal(size=width).astype(np.float32), "bias")
    graph = helper.make_graph([helper.make_node("BiasGelu", ["x", "bias"], ["y"], domain="com.microsoft")], "gelu",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, width])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, width])], [bias])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20), helper.make_opsetid("com.microsoft", 1)])
    x = (rng.normal(size=(4, width)) * 3).astype(np.float32)
    t = x + numpy_helper.to_array(bias)
    exact = 0.5 * t * (1 + np.vectorize(erf)(t / np.sqrt(2)))
    np.testing.assert_allclose(run(model, {"x": x}), exact, atol=1e-5)
    assert fast_gelu(model) == 1 and model.graph.node[0].op_type == "FastGelu"
    approx = run(model, {"x": x})
    assert 0 < np.abs(approx - exact).max() < 1e-3  # the tanh approximation: close, not equal
