"""The rewrites of onnxruntime-fused transformer graphs (compress/onnx_export_attention.py), on tiny hand-built graphs:
com.microsoft Attention -> QKV MatMul + ONNX Attention with each row's key length (same values, padding masked), a
round-7 If(unpadded) around ONNX Attention -> the same one op, BiasGelu -> FastGelu, and the op types dynamic int8 then
quantizes."""

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from dlforge.compress.onnx_export_attention import (  # noqa: E402
    ONNX_ATTENTION_OPSET,
    fast_gelu,
    lengths_attention,
    onnx_attention,
)
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
    # No If and no mask tensor: one standard Attention taking each row's key length (nonpad_kv_seqlen, int64).
    assert ("If", "") not in ops and ops.count(("Attention", "")) == 1 and ops.count(("Cast", "")) == 1
    (attention,) = [n for n in model.graph.node if n.op_type == "Attention"]
    assert len(attention.input) == 7 and attention.input[3:6] == ["", "", ""] and attention.input[6]
    assert {o.version for o in model.opset_import if o.domain == ""} == {ONNX_ATTENTION_OPSET} == {24}
    after = run(model, feeds)
    np.testing.assert_allclose(after, before, atol=1e-5)
    unpadded = {"x": x, "mask": np.ones_like(mask)}  # no row padded (every batch of one row)
    np.testing.assert_allclose(run(model, unpadded), run(attention_graph(), unpadded), atol=1e-5)
    # The padding is masked: a padded key changes nothing for the real positions of a shorter row.
    x2 = x.copy()
    x2[2, 1:] = 100.0
    assert np.allclose(run(model, {"x": x2, "mask": mask})[2, 0], after[2, 0], atol=1e-5)
    assert onnx_attention(model) == 0  # nothing left to rewrite


def round7_if_graph():
    """What round 7's onnx_attention wrote: Q/K/V MatMuls, a boolean (B, 1, S, S) mask built from the row lengths by
    nodes named attn_mask_0_*, and an If on "no row padded" between the unmasked and the masked ONNX Attention (23)."""
    model = attention_graph()
    onnx_attention(model)
    graph = model.graph
    (attention,) = [n for n in graph.node if n.op_type == "Attention"]
    q, k, v = attention.input[:3]
    cast = next(n for n in graph.node if n.op_type == "Cast")
    lengths = cast.input[0]
    graph.initializer.extend([numpy_helper.from_array(np.arange(LENGTH, dtype=np.int32), "attn_mask_positions"),
                              numpy_helper.from_array(np.array([1], np.int64), "attn_mask_axis1"),
                              numpy_helper.from_array(np.array([1, 2], np.int64), "attn_mask_axes12"),
                              numpy_helper.from_array(np.array([BATCH, 1, LENGTH, LENGTH], np.int64), "attn_mask_shape"),
                              numpy_helper.from_array(np.array(LENGTH, np.int32), "attn_mask_length")])
    mask_nodes = [
        helper.make_node("Unsqueeze", [lengths, "attn_mask_axis1"], ["attn_mask_0_lengths"], name="attn_mask_0_lengths"),
        helper.make_node("Less", ["attn_mask_positions", "attn_mask_0_lengths"], ["attn_mask_0_keys"], name="attn_mask_0_keys"),
        helper.make_node("Unsqueeze", ["attn_mask_0_keys", "attn_mask_axes12"], ["attn_mask_0_keys4"], name="attn_mask_0_keys4"),
        helper.make_node("Expand", ["attn_mask_0_keys4", "attn_mask_shape"], ["attn_mask_0_bool"], name="attn_mask_0_expand"),
        helper.make_node("ReduceMin", [lengths], ["attn_mask_0_shortest"], name="attn_mask_0_shortest", keepdims=0),
        helper.make_node("Equal", ["attn_mask_0_shortest", "attn_mask_length"], ["attn_mask_0_unpadded"],
                         name="attn_mask_0_unpadded")]
    branches = {}
    for branch, inputs in (("unmasked", [q, k, v]), ("masked", [q, k, v, "attn_mask_0_bool"])):
        branches[branch] = helper.make_graph(
            [helper.make_node("Attention", inputs, [f"attention_0_{branch}"], name=f"attention_0_onnx_{branch}",
                              q_num_heads=HEADS, kv_num_heads=HEADS)], branch, [],
            [helper.make_tensor_value_info(f"attention_0_{branch}", TensorProto.FLOAT, None)])
    switch = helper.make_node("If", ["attn_mask_0_unpadded"], [attention.output[0]], name="attention_0_if_unpadded",
                              then_branch=branches["unmasked"], else_branch=branches["masked"])
    nodes = [n for n in graph.node if n.op_type not in ("Attention", "Cast")]
    del graph.node[:]
    graph.node.extend(nodes + mask_nodes + [switch])
    for opset in model.opset_import:
        if opset.domain == "":
            opset.version = 23
    return model


def test_a_round7_if_becomes_one_attention_with_row_lengths_and_the_same_values():
    model = round7_if_graph()
    x = np.random.default_rng(2).normal(size=(BATCH, LENGTH, HIDDEN)).astype(np.float32)
    mask = np.ones((BATCH, LENGTH), np.int32)
    mask[0, 2:] = 0
    padded, unpadded = {"x": x, "mask": mask}, {"x": x, "mask": np.ones_like(mask)}
    before = {"padded": run(model, padded), "unpadded": run(model, unpadded)}
    assert lengths_attention(model) == 1
    onnx.checker.check_model(model)
    ops = [n.op_type for n in model.graph.node]
    assert "If" not in ops and ops.count("Attention") == 1 and ops.count("Cast") == 1
    assert not [n.name for n in model.graph.node if n.name.startswith("attn_mask_")]  # the mask builders go
    assert not [i.name for i in model.graph.initializer if i.name.startswith("attn_mask_")]
    assert {o.version for o in model.opset_import if o.domain == ""} == {ONNX_ATTENTION_OPSET}
    np.testing.assert_allclose(run(model, padded), before["padded"], atol=1e-5)
    np.testing.assert_allclose(run(model, unpadded), before["unpadded"], atol=1e-5)
    assert lengths_attention(model) == 0 and lengths_attention(attention_graph()) == 0  # nothing (more) to take


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
