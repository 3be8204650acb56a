"""Bias correction for int8 weights (Nagel et al. 2019, "Data-free quantization through weight equalization and
bias correction", section 4.2; Finkelstein et al. 2019, "Fighting quantization bias with bias").

A layer's int8 weights are W' = W + e. On inputs x its output moves by e x, whose mean over the data,
E[e x] per output channel, is a systematic shift that the next layers see as a wrong bias; with few weights per
output channel (a depthwise 3x3 conv has 9) the per-channel rounding errors do not average out, and the shifts of
successive layers add up. The correction subtracts E[e x] from the layer's bias. Here E[e x] is measured
("empirical" bias correction) on the calibration rows: the fp32 graph gets, beside each int8 layer, the same op
with e as its weight and no bias, averaged over rows and positions, and one pass over the rows gives every layer's
shift. The inputs x are the fp32 graph's (Nagel's form: the error of the weights alone, not of the activations).
"""

from __future__ import annotations

import numpy as np

BATCH = 16


def _dequantized_weights(qmodel) -> dict[str, np.ndarray]:
    """{layer name: its int8 weight dequantized} for each Conv/Gemm of a QDQ graph whose weight is int8."""
    from onnx import numpy_helper

    inits = {i.name: i for i in qmodel.graph.initializer}
    producers = {n.output[0]: n for n in qmodel.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits}
    found = {}
    for node in qmodel.graph.node:
        if node.op_type not in ("Conv", "Gemm") or len(node.input) < 2 or node.input[1] not in producers:
            continue
        deq = producers[node.input[1]]
        values = numpy_helper.to_array(inits[deq.input[0]]).astype(np.float32)
        scale = numpy_helper.to_array(inits[deq.input[1]]).astype(np.float32)
        zero = (numpy_helper.to_array(inits[deq.input[2]]).astype(np.float32)
                if len(deq.input) > 2 and deq.input[2] in inits else np.zeros_like(scale))
        shape = [1] * values.ndim
        if scale.ndim:
            shape[next((a.i for a in deq.attribute if a.name == "axis"), 1)] = -1
        found[node.name] = (values - zero.reshape(shape)) * scale.reshape(shape)
    return found


def weight_error_shifts(model, qmodel, x: dict[str, np.ndarray], *, threads: int | None = None) -> dict[str, np.ndarray]:
    """{layer name: E[e x] per output channel} over rows `x` for each Conv/Gemm of the fp32 `model` whose weight is
    int8 in the QDQ graph `qmodel` (same node names); e = dequantized int8 weight - fp32 weight."""
    import onnx
    import onnxruntime
    from onnx import helper, numpy_helper

    int8 = _dequantized_weights(qmodel)
    model = onnx.ModelProto.FromString(model.SerializeToString())  # probes go into a copy
    inits = {i.name: i for i in model.graph.initializer}
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17)
    probes: dict[str, str] = {}
    outputs = []
    for node in list(model.graph.node):
        if node.name not in int8 or node.input[1] not in inits:
            continue
        weight = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
        if weight.shape != int8[node.name].shape:
            continue
        error = f"{node.name}__weight_error"
        model.graph.initializer.append(numpy_helper.from_array(int8[node.name] - weight, error))
        shifted, mean = f"{node.name}__shift", f"{node.name}__mean_shift"
        probe = helper.make_node(node.op_type, [node.input[0], error], [shifted], name=f"{node.name}__probe")
        probe.attribute.extend(a for a in node.attribute if not (node.op_type == "Gemm" and a.name == "beta"))
        axes = [0, *range(2, len(weight.shape))] if node.op_type == "Conv" else [0]  # all but the channel axis
        if opset >= 18:
            model.graph.initializer.append(numpy_helper.from_array(np.array(axes, np.int64), f"{node.name}__axes"))
            reduce = helper.make_node("ReduceMean", [shifted, f"{node.name}__axes"], [mean], keepdims=0)
        else:
            reduce = helper.make_node("ReduceMean", [shifted], [mean], axes=axes, keepdims=0)
        model.graph.node.extend([probe, reduce])
        outputs.append(helper.make_tensor_value_info(mean, onnx.TensorProto.FLOAT, None))
        probes[node.name] = mean
    if not probes:
        return {}
    del model.graph.output[:]
    model.graph.output.extend(outputs)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads or 0
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = list(probes)
    n = len(next(iter(x.values())))
    totals = [0.0] * len(names)
    for start in range(0, n, BATCH):
        batch = {k: v[start:start + BATCH] for k, v in x.items()}
        rows = len(next(iter(batch.values())))
        for i, value in enumerate(session.run([probes[name] for name in names], batch)):
            totals[i] = totals[i] + value.astype(np.float64) * rows
    return {name: (total / n).astype(np.float32) for name, total in zip(names, totals)}


def apply_shifts(model, shifts: dict[str, np.ndarray]) -> int:
    """Subtract each layer's shift from its bias in `model` (a bias is added where the layer has none); returns how
    many layers changed."""
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    users: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            users[name] = users.get(name, 0) + 1
    changed = 0
    for node in model.graph.node:
        shift = shifts.get(node.name)
        if shift is None:
            continue
        if len(node.input) > 2 and node.input[2] in inits and users[node.input[2]] == 1:
            bias = numpy_helper.to_array(inits[node.input[2]]).astype(np.float32)
            inits[node.input[2]].CopyFrom(numpy_helper.from_array((bias - shift.reshape(bias.shape)), node.input[2]))
        else:  # no bias, or one shared with another layer: this layer gets its own
            old = (numpy_helper.to_array(inits[node.input[2]]).astype(np.float32)
                   if len(node.input) > 2 and node.input[2] in inits else np.zeros(shift.shape, np.float32))
            name = f"{node.name}__corrected_bias"
            model.graph.initializer.append(numpy_helper.from_array(old - shift.reshape(old.shape), name))
            if len(node.input) > 2:
                node.input[2] = name
            else:
                node.input.append(name)
        changed += 1
    return changed


def shift_summary(shifts: dict[str, np.ndarray], rows: int) -> dict:
    """What the report says of a bias correction: layers, rows, the largest |shift| and its layer."""
    if not shifts:
        return {"layers": 0, "rows": rows, "largest_shift": 0.0, "largest_in": None}
    name, shift = max(shifts.items(), key=lambda item: float(np.abs(item[1]).max()))
    return {"layers": len(shifts), "rows": rows, "largest_shift": float(np.abs(shift).max()), "largest_in": name}


__all__ = ["apply_shifts", "shift_summary", "weight_error_shifts"]
