"""The input scaling folded into the first convolution before int8 quantization (compress/graph_fold.py)."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from dlforge.compress.graph_fold import fold_input_scaling  # noqa: E402


def _graph(*, pads: int, shift: float | None, extra_consumer: bool = False):
    """image (N, 3, 8, 8) -> Mul(per channel) [-> Add(per channel)] -> Conv(3->4, 3x3, pads) -> out."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(np.array([1 / 255, 2 / 255, 0.5 / 255], np.float32).reshape(1, 3, 1, 1), "a"),
             numpy_helper.from_array(rng.normal(size=(4, 3, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.normal(size=4).astype(np.float32), "bias")]
    nodes = [helper.make_node("Mul", ["image", "a"], ["scaled"], name="scale")]
    conv_in = "scaled"
    if shift is not None:
        inits.append(numpy_helper.from_array(np.array([shift, -shift, 2 * shift], np.float32).reshape(1, 3, 1, 1), "b"))
        nodes.append(helper.make_node("Add", ["scaled", "b"], ["shifted"], name="shift"))
        conv_in = "shifted"
    nodes.append(helper.make_node("Conv", [conv_in, "w", "bias"], ["out"], name="conv", kernel_shape=[3, 3],
                                  pads=[pads] * 4))
    outputs = [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)]
    if extra_consumer:  # the scaled image is also a graph output: the scaling cannot go away
        nodes.append(helper.make_node("Relu", [conv_in], ["side"], name="side"))
        outputs.append(helper.make_tensor_value_info("side", TensorProto.FLOAT, None))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [None, 3, 8, 8])],
                              outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(model, x):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(["out"], {"image": x})[0]


@pytest.mark.parametrize("pads, shift", [(0, -1.0), (1, None), (0, None)])
def test_scaling_folds_into_the_first_conv_with_the_same_outputs(pads, shift):
    model = _graph(pads=pads, shift=shift)
    x = np.random.default_rng(1).integers(0, 256, size=(2, 3, 8, 8)).astype(np.float32)
    before = _run(model, x)
    folded = fold_input_scaling(model)
    assert len(folded) == 1 and "folded into Conv 'conv'" in folded[0]
    assert [n.op_type for n in model.graph.node] == ["Conv"]
    assert model.graph.node[0].input[0] == "image"
    assert {i.name for i in model.graph.initializer} == {"w", "bias"}  # the scaling constants are gone
    np.testing.assert_allclose(_run(model, x), before, rtol=1e-5, atol=1e-4)


def test_a_shift_is_not_folded_into_a_padded_conv():
    """Padding reads 0 where the scaled graph reads the shift: folding would change the border outputs."""
    model = _graph(pads=1, shift=-1.0)
    before = model.SerializeToString()
    assert fold_input_scaling(model) == []
    assert model.SerializeToString() == before


def test_a_scaled_input_used_elsewhere_is_left_alone():
    model = _graph(pads=0, shift=None, extra_consumer=True)
    assert fold_input_scaling(model) == []
    assert [n.op_type for n in model.graph.node] == ["Mul", "Conv", "Relu"]
