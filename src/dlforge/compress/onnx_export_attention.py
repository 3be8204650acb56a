"""Graph rewrites of onnxruntime-fused transformer graphs that make them faster on onnxruntime's CPU provider.

- `onnx_attention`: each com.microsoft `Attention` (the transformer optimizer's fusion: QKV projection with packed
  weights + attention, mask given as each row's length) becomes three MatMul + Add (the Q, K and V projections,
  the packed weights' column blocks) and the standard ONNX `Attention` op (opset 24), which takes the key-padding
  mask as each row's key length (`nonpad_kv_seqlen`, from the fused graph's row lengths: right padding, as dlforge
  pads). The same arithmetic (the logits agree to ~1e-6); what changes is the kernel: on this project's CPU (AMD
  EPYC, AVX512-VNNI, onnxruntime 1.32, 1 thread) the standard kernel takes 0.38 ms for MiniLM's (1, 128, 384) x 12
  heads where com.microsoft MultiHeadAttention takes 0.49 ms (benchmarks/compress.md, Round 7), and dynamic int8
  then runs the Q, K, V projections as int8 MatMuls sharing one quantization of their input (0.32 ms together)
  instead of inside QAttention, whose attention part (0.52 ms) is the slow one. The row lengths cost about what no
  mask costs (0.466 vs 0.455 ms; a (B, 1, S, S) boolean mask 0.490: Round 8), so one op per layer does what an If
  between an unmasked and a masked kernel did before (round 7: 6 If + 14 mask-building nodes in MiniLM).
- `lengths_attention`: turns such a round-7 If (and its mask-building nodes) into the one opset-24 op, for graphs
  exported before it (`dlforge quantize` applies it).
- `fast_gelu`: BiasGelu (exact, erf) becomes FastGelu (tanh approximation, |difference| < 5e-4 per activation),
  0.13 ms instead of 0.19 ms on a (1, 128, 1536) input. Only int8 variants take it (compress/quantize.py): it is
  an approximation, as int8 is, and the variant's accuracy is measured with it; the fp32 export stays exact.

All are no-ops on a graph without those nodes, so they apply to graphs exported before they existed.
"""

from __future__ import annotations

import numpy as np

ONNX_ATTENTION_OPSET = 24  # the standard Attention op (23) with each row's key length (nonpad_kv_seqlen, 24)
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
    lengths64: dict[str, str] = {}
    nodes, unused = [], set()
    for node in graph.node:
        if not any(node is t for t in targets):
            nodes.append(node)
            continue
        heads = _attributes(node)["num_heads"]
        x, weight, bias = node.input[0], node.input[1], node.input[2]
        lengths = node.input[3] if len(node.input) > 3 else ""
        hidden = int(inits[weight].dims[1]) // 3
        p = node.name or f"attention_{len(nodes)}"
        if lengths and lengths not in lengths64:  # each row's length as int64, once for all layers
            lengths64[lengths] = f"attn_lengths64_{len(lengths64)}"
            nodes.append(helper.make_node("Cast", [lengths], [lengths64[lengths]], name=lengths64[lengths],
                                          to=TensorProto.INT64))
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
        # The key-padding mask as each row's key length (nonpad_kv_seqlen, opset 24; right padding as dlforge pads):
        # keys at or past it are masked; at batch 1 it masks nothing, at about the cost of no mask.
        nodes.append(helper.make_node("Attention", qkv + (["", "", "", lengths64[lengths]] if lengths else []),
                                      [node.output[0]], name=f"{p}_onnx", q_num_heads=heads, kv_num_heads=heads))
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


def lengths_attention(model) -> int:
    """Rewrite (in place) each If that an earlier `onnx_attention` (before opset 24) built, "no row padded ? ONNX
    Attention(q, k, v) : ONNX Attention(q, k, v, boolean mask)", as one ONNX Attention taking each row's key length
    (nonpad_kv_seqlen), and drop the mask-building nodes; returns how many. Same values; 6 If and 14 mask nodes fewer
    in MiniLM. Ifs of any other shape are left as they were."""
    from onnx import TensorProto, helper

    graph = model.graph
    producers = {o: n for n in graph.node for o in n.output}

    def single_attention(node, branch):
        g = next((a.g for a in node.attribute if a.name == branch), None)
        if g is None or len(g.node) != 1 or g.node[0].op_type != "Attention" or g.node[0].domain not in ("", "ai.onnx"):
            return None
        return g.node[0]

    lengths64: dict[str, str] = {}
    nodes, count = [], 0
    for node in graph.node:
        then, other = single_attention(node, "then_branch"), single_attention(node, "else_branch")
        mask = other.input[3] if other is not None and len(other.input) == 4 else ""
        builder = producers.get(mask.removesuffix("_bool") + "_lengths") if mask.endswith("_bool") else None
        if (node.op_type != "If" or then is None or list(then.input) != list(other.input[:3]) or builder is None
                or builder.op_type != "Unsqueeze"):
            nodes.append(node)
            continue
        lengths = builder.input[0]
        if lengths not in lengths64:
            lengths64[lengths] = f"attn_lengths64_{len(lengths64)}"
            nodes.append(helper.make_node("Cast", [lengths], [lengths64[lengths]], name=lengths64[lengths],
                                          to=TensorProto.INT64))
        nodes.append(helper.make_node("Attention", list(then.input) + ["", "", "", lengths64[lengths]],
                                      [node.output[0]], name=then.name.removesuffix("_unmasked"),
                                      **_attributes(then)))
        count += 1
    if not count:
        return 0
    del graph.node[:]
    graph.node.extend(nodes)
    while True:  # the mask-building nodes nothing reads any more
        used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
        dead = [n for n in graph.node if n.name.startswith("attn_mask_") and not any(o in used for o in n.output)]
        if not dead:
            break
        kept = [n for n in graph.node if not any(n is d for d in dead)]
        del graph.node[:]
        graph.node.extend(kept)
    used = {i for n in graph.node for i in n.input}
    kept = [i for i in graph.initializer if not i.name.startswith("attn_mask_") or i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx") and opset.version < ONNX_ATTENTION_OPSET:
            opset.version = ONNX_ATTENTION_OPSET
    return count


def fast_gelu(model) -> int:
    """Rewrite every BiasGelu node of `model` (in place) as FastGelu (same inputs: x, bias); returns how many."""
    count = 0
    for node in model.graph.node:
        if node.op_type == "BiasGelu" and node.domain == MS_DOMAIN:
            node.op_type = "FastGelu"
            count += 1
    return count


__all__ = ["ONNX_ATTENTION_OPSET", "fast_gelu", "lengths_attention", "onnx_attention"]
