"""Fold the graph's input scaling into the first convolution before int8 quantization.

`dlforge export` puts an image input's scaling in the graph as `x * a + b` (per channel) in front of the first
layer, so a client sends pixels 0..255. In a static int8 graph that affine step is one more quantized operator
per call (a QLinearMul/QLinearAdd between the input's QuantizeLinear and the first QLinearConv): at batch 1 on a
small CNN that is a measurable share of the whole call. When the scaled input feeds only a Conv, the step is
exact to fold into that Conv:

    conv(W, a*x + b) = conv(W * a[c_in], x) + (bias + sum_{c_in,kh,kw} W * b[c_in])

The bias term is exact only where the convolution never reads padding (the padding would be `b`, not 0 after
scaling): so a non-zero `b` is folded only into a Conv without padding; a pure scale (`b` = 0) always folds.
The input's QuantizeLinear then sees pixels 0..255 directly (uint8 pixels are represented exactly).
"""

from __future__ import annotations

import numpy as np


def _attr(node, name, default=None):
    import onnx

    for attribute in node.attribute:
        if attribute.name == name:
            return onnx.helper.get_attribute_value(attribute)
    return default


def fold_input_scaling(model) -> list[str]:
    """Fold `input * a (+ b)` into the Conv it feeds, in place; returns what was folded (one line per input)."""
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    produced_by_graph_output = {o.name for o in model.graph.output}
    folded, removed = [], set()
    for graph_input in model.graph.input:
        chain = consumers.get(graph_input.name, [])
        if len(chain) != 1 or chain[0].op_type != "Mul":
            continue
        mul = chain[0]
        scale_name = next((i for i in mul.input if i != graph_input.name), None)
        if scale_name not in inits:
            continue
        scale = numpy_helper.to_array(inits[scale_name]).astype(np.float64)
        nodes, shift, current = [mul], None, mul.output[0]
        after = consumers.get(current, [])
        if len(after) == 1 and after[0].op_type == "Add":
            add = after[0]
            shift_name = next((i for i in add.input if i != current), None)
            if shift_name in inits:
                shift = numpy_helper.to_array(inits[shift_name]).astype(np.float64)
                nodes.append(add)
                current = add.output[0]
        convs = consumers.get(current, [])
        if len(convs) != 1 or convs[0].op_type != "Conv" or convs[0].input[0] != current:
            continue
        if current in produced_by_graph_output or convs[0].input[1] not in inits:
            continue
        conv = convs[0]
        weight = numpy_helper.to_array(inits[conv.input[1]]).astype(np.float64)  # (out, in/groups, kh, kw)
        if _attr(conv, "group", 1) != 1:
            continue
        in_channels = weight.shape[1]
        try:  # per-channel (1, C, 1, 1) or scalar constants only
            a = np.broadcast_to(scale.reshape(-1), (in_channels,)) if scale.size in (1, in_channels) else None
            b = (np.broadcast_to(shift.reshape(-1), (in_channels,)) if shift is not None and shift.size in (1, in_channels)
                 else (None if shift is not None else np.zeros(in_channels)))
        except ValueError:
            continue
        if a is None or b is None or (scale.ndim == 4 and scale.shape[1] != scale.size and scale.size != 1):
            continue
        pads = _attr(conv, "pads", [0, 0, 0, 0]) or [0, 0, 0, 0]
        auto_pad = _attr(conv, "auto_pad", b"NOTSET")
        if np.any(b != 0) and (any(pads) or auto_pad not in (b"NOTSET", b"VALID", "NOTSET", "VALID")):
            continue  # padding would read 0 where the scaled graph reads b: not exact
        new_weight = weight * a.reshape(1, -1, 1, 1)
        bias_shift = (weight * b.reshape(1, -1, 1, 1)).sum(axis=(1, 2, 3))
        if len(conv.input) > 2 and conv.input[2] in inits:
            bias = numpy_helper.to_array(inits[conv.input[2]]).astype(np.float64) + bias_shift
            bias_name = conv.input[2]
        else:
            bias, bias_name = bias_shift, f"{conv.name}_folded_bias"
        for name, value in ((conv.input[1], new_weight), (bias_name, bias)):
            tensor = numpy_helper.from_array(value.astype(np.float32), name)
            if name in inits:
                inits[name].CopyFrom(tensor)
            else:
                model.graph.initializer.append(tensor)
        inputs = [graph_input.name, conv.input[1], bias_name]
        del conv.input[:]
        conv.input.extend(inputs)
        removed.update(n.output[0] for n in nodes)
        folded.append(f"input '{graph_input.name}': {' + '.join(n.op_type for n in nodes)} folded into Conv "
                      f"'{conv.name}' (its weights and bias)")
    if removed:
        kept = [n for n in model.graph.node if n.output[0] not in removed]
        del model.graph.node[:]
        model.graph.node.extend(kept)
        used = {i for n in model.graph.node for i in n.input}
        unused = [i for i in model.graph.initializer if i.name not in used]
        for init in unused:
            model.graph.initializer.remove(init)
    return folded


__all__ = ["fold_input_scaling"]
