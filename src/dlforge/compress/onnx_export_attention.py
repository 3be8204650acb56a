"""Graph rewrites of onnxruntime-fused transformer graphs that make them faster on onnxruntime's CPU provider.

- `onnx_attention`: each com.microsoft `Attention` (the transformer optimizer's fusion: QKV projection with packed
  weights + attention, mask given as each row's length) becomes three MatMul + Add (the Q, K and V projections,
  the packed weights' column blocks) and the standard ONNX `Attention` op (opset 23) with a boolean key-padding
  mask built once for all layers.
  The same arithmetic (the logits agree to ~1e-6); what changes is the kernel: on this project's CPU (AMD EPYC,
  AVX512-VNNI, onnxruntime 1.32, 1 thread) the opset-23 kernel takes 0.38 ms for MiniLM's (1, 128, 384) x 12 heads
  where com.microsoft MultiHeadAttention takes 0.49 ms (benchmarks/compress.md, Round 7), and dynamic int8 then
  runs the Q, K, V projections as int8 MatMuls sharing one quantization of their input (0.32 ms together) instead
  of inside QAttention, whose attention part (0.52 ms) is the slow one. Each layer's Attention sits in an If on "no row is padded" (always so at batch 1: the
  onnx runtime trims padding): the kernel without a mask there (0.41 vs 0.45 ms; an If costs nothing measurable),
  with the mask otherwise. The mask is each row's length from the fused graph (right padding, as dlforge pads).
- `fast_gelu`: BiasGelu (exact, erf) becomes FastGelu (tanh approximation, |difference| < 5e-4 per activation),
  0.13 ms instead of 0.19 ms on a (1, 128, 1536) input. Only int8 variants take it (compress/quantize.py): it is
  an approximation, as int8 is, and the variant's accuracy is measured with it; the fp32 export stays exact.

Both are no-ops on a graph without those nodes, so they apply to graphs exported before they existed.
"""

from __future__ import annotations

import numpy as np

ONNX_ATTENTION_OPSET = 23  # the first opset with the standard Attention op; onnxruntime 1.32 runs up to 23
MS_DOMAIN = "com.microsoft"


def _attributes(node) -> dict:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _lengths_producer(model, name: str) -> bool:
    """Whether the tensor `name` is each row's length, the mask format ('MaskIndexEnd') the transformer optimizer
    gives BERT-like models: EmbedLayerNormalization's second output (the row sums of its mask input), or a
    ReduceSum of the mask over the sequence axis (keepdims 0)."""
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "EmbedLayerNormalization" and len(node.output) > 1 and node.output[1] == name:
            return len(node.input) > 7 and bool(node.input[7])
        if name in node.output and node.op_type == "ReduceSum":
            keep = _attributes(node).get("keepdims", 1)
            axes = numpy_helper.to_array(inits[node.input[1]]).tolist() if len(node.input) > 1 and node.input[1] in inits else None
            return keep == 0 and axes in ([1], [-1])
    return False


def _convertible(model, node) -> str | None:
    """Why this Attention node is kept as it is (None: it can be rewritten)."""
    attrs = _attributes(node)
    inits = {i.name for i in model.graph.initializer}
    extra = set(attrs) - {"num_heads"}
    if extra:
        return f"attributes {sorted(extra)}"
    inputs = list(node.input) + [""] * (4 - len(node.input))
    if len(node.input) > 4 and any(node.input[4:]):
        return "past state or attention bias inputs"
    if inputs[1] not in inits or inputs[2] not in inits:
        return "QKV weights or bias are not constants"
    if inputs[3] and not _lengths_producer(model, inputs[3]):
        return "its mask is not one length per row"
    return None


def onnx_attention(model) -> int:
    """Rewrite every com.microsoft Attention node of `model` (in place) as Q/K/V MatMul + Add and ONNX Attention
    (module docstring); returns how many. The model's default-domain opset becomes ONNX_ATTENTION_OPSET when one is
    rewritten. Nodes this does not take (past state, unidirectional, other mask formats) are left as they were."""
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    targets = [n for n in graph.node if n.op_type == "Attention" and n.domain == MS_DOMAIN
               and _convertible(model, n) is None]
    if not targets:
        return 0
    inits = {i.name: i for i in graph.initializer}
    constants = {"attn_mask_axis0": [0], "attn_mask_axis1": [1], "attn_mask_axes12": [1, 2], "attn_mask_one": [1]}
    for name, value in constants.items():
        graph.initializer.append(numpy_helper.from_array(np.array(value, np.int64), name))
    graph.initializer.append(numpy_helper.from_array(np.array(0, np.int32), "attn_mask_zero"))
    graph.initializer.append(numpy_helper.from_array(np.array(1, np.int32), "attn_mask_step"))
    masks: dict[str, tuple[str, str]] = {}
    nodes, unused = [], set()

    def mask_for(lengths: str, x: str) -> list:
        """(B, 1, S, S) bool: key position < the row's length (right padding), and a bool scalar: no row is
        padded; built once, from the shape of the first layer's input (every layer's has the same batch and
        length)."""
        key = lengths
        if key in masks:
            return []
        p = f"attn_mask_{len(masks)}"
        masks[key] = (f"{p}_bool", f"{p}_unpadded")
        return [
            helper.make_node("Shape", [x], [f"{p}_shape"], name=f"{p}_Shape"),
            helper.make_node("Gather", [f"{p}_shape", "attn_mask_axis0"], [f"{p}_batch"], name=f"{p}_batch", axis=0),
            helper.make_node("Gather", [f"{p}_shape", "attn_mask_axis1"], [f"{p}_length"], name=f"{p}_length", axis=0),
            helper.make_node("Concat", [f"{p}_batch", "attn_mask_one", f"{p}_length", f"{p}_length"],
                             [f"{p}_shape4"], name=f"{p}_shape4", axis=0),
            helper.make_node("Squeeze", [f"{p}_length", "attn_mask_axis0"], [f"{p}_s"], name=f"{p}_s"),
            helper.make_node("Cast", [f"{p}_s"], [f"{p}_s32"], name=f"{p}_s32", to=6),  # int32, as the lengths
            helper.make_node("Range", ["attn_mask_zero", f"{p}_s32", "attn_mask_step"], [f"{p}_positions"],
                             name=f"{p}_positions"),
            helper.make_node("Unsqueeze", [lengths, "attn_mask_axis1"], [f"{p}_lengths"], name=f"{p}_lengths"),
            helper.make_node("Cast", [f"{p}_lengths"], [f"{p}_lengths32"], name=f"{p}_lengths32", to=6),
            helper.make_node("Less", [f"{p}_positions", f"{p}_lengths32"], [f"{p}_keys"], name=f"{p}_keys"),
            helper.make_node("Unsqueeze", [f"{p}_keys", "attn_mask_axes12"], [f"{p}_keys4"], name=f"{p}_keys4"),
            helper.make_node("Expand", [f"{p}_keys4", f"{p}_shape4"], [masks[key][0]], name=f"{p}_expand"),
            helper.make_node("ReduceMin", [f"{p}_lengths32"], [f"{p}_shortest"], name=f"{p}_shortest", keepdims=0),
            helper.make_node("Equal", [f"{p}_shortest", f"{p}_s32"], [masks[key][1]], name=f"{p}_unpadded"),
        ]

    for node in graph.node:
        if not any(node is t for t in targets):
            nodes.append(node)
            continue
        heads = _attributes(node)["num_heads"]
        x, weight, bias = node.input[0], node.input[1], node.input[2]
        lengths = node.input[3] if len(node.input) > 3 else ""
        hidden = int(inits[weight].dims[1]) // 3
        p = node.name or f"attention_{len(nodes)}"
        nodes.extend(mask_for(lengths, x) if lengths else [])
        # Q, K and V as three MatMul + Add from the packed weights' column blocks: after dynamic int8 they share one
        # quantization of x, and no Split copies the packed output (3% of the int8 call at 128 tokens).
        packed_weight, packed_bias = numpy_helper.to_array(inits[weight]), numpy_helper.to_array(inits[bias])
        unused |= {weight, bias}
        qkv = [f"{p}_q", f"{p}_k", f"{p}_v"]
        for j, (part, out) in enumerate(zip("qkv", qkv)):
            columns = slice(j * hidden, (j + 1) * hidden)
            graph.initializer.extend([
                numpy_helper.from_array(np.ascontiguousarray(packed_weight[:, columns]), f"{p}_{part}_weight"),
                numpy_helper.from_array(np.ascontiguousarray(packed_bias[columns]), f"{p}_{part}_bias")])
            nodes += [helper.make_node("MatMul", [x, f"{p}_{part}_weight"], [f"{out}_matmul"], name=f"{p}_{part}_MatMul"),
                      helper.make_node("Add", [f"{out}_matmul", f"{p}_{part}_bias"], [out], name=f"{p}_{part}_bias")]
        if not lengths:
            nodes.append(helper.make_node("Attention", qkv, [node.output[0]], name=f"{p}_onnx", q_num_heads=heads,
                                          kv_num_heads=heads))
            continue
        # Unpadded (every batch of one row, as the onnx runtime trims padding): the kernel without a mask, 10%
        # faster; else with it. Same values either way (a mask of all True masks nothing).
        mask, unpadded = masks[lengths]
        branches = {}
        for branch, inputs in (("unmasked", qkv), ("masked", qkv + [mask])):
            out = f"{p}_{branch}"
            branches[branch] = helper.make_graph(
                [helper.make_node("Attention", inputs, [out], name=f"{p}_onnx_{branch}", q_num_heads=heads,
                                  kv_num_heads=heads)], f"{p}_{branch}", [],
                [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)])
        nodes.append(helper.make_node("If", [unpadded], [node.output[0]], name=f"{p}_if_unpadded",
                                      then_branch=branches["unmasked"], else_branch=branches["masked"]))
    del graph.node[:]
    graph.node.extend(nodes)
    used = {i for n in graph.node for i in n.input}
    kept = [i for i in graph.initializer if i.name not in unused or i.name in used]  # the packed QKV weights go
    del graph.initializer[:]
    graph.initializer.extend(kept)
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx") and opset.version < ONNX_ATTENTION_OPSET:
            opset.version = ONNX_ATTENTION_OPSET
    return len(targets)


def fast_gelu(model) -> int:
    """Rewrite every BiasGelu node of `model` (in place) as FastGelu (same inputs: x, bias); returns how many."""
    count = 0
    for node in model.graph.node:
        if node.op_type == "BiasGelu" and node.domain == MS_DOMAIN:
            node.op_type = "FastGelu"
            count += 1
    return count


__all__ = ["ONNX_ATTENTION_OPSET", "fast_gelu", "onnx_attention"]
