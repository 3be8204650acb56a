"""One MiniLM attention layer on onnxruntime's CPU provider: the fp32 kernels against an int8 attention core built
from standard and com.microsoft ops (compress.md, round 8).

    OMP_NUM_THREADS=1 python benchmarks/compress_minilm_attention.py [--length 128] [--calls 300]

Q, K, V: (1, length, 384) fp32, 12 heads of 32 (MiniLM-L6's shape), random with the spread of the fine-tuned model's
projections. Graphs, each its own session (1 intra-op thread, ORT_ENABLE_ALL):
- fp32 ONNX Attention (opset 23) without a mask, with a (1, 1, S, S) boolean mask, and (opset 24) with each row's
  key length (`nonpad_kv_seqlen`: what `dlforge export` writes since round 8);
- int8 core, dynamic: Q by DynamicQuantizeLinear (uint8; 1/sqrt(d) folded into its scale), K and V symmetric int8
  from their max |value| (ReduceMax/ReduceMin/Neg/Max/Mul + QuantizeLinear), heads by Reshape + Transpose of the
  8-bit tensors, scores by MatMulIntegerToFloat, Softmax in fp32, the probabilities QuantizeLinear'd with the fixed
  scale 1/255 (uint8), P.V by MatMulIntegerToFloat, Transpose + Reshape back;
- int8 core, static: the same with Q, K, V quantized by QuantizeLinear at fixed scales (here from the data itself;
  calibrated on training rows in a real graph): the cheapest int8 core these ops allow.
Printed: each graph's max abs difference to the fp32 kernel and its p50 thread CPU time over interleaved calls
(engines in turn, the order rotating). The int8 core's two GEMMs are faster than the fp32 kernel's, but its
quantize, transpose and separate softmax nodes cost more than they save: onnxruntime 1.32 has no fused int8
attention kernel for the CPU.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

HIDDEN, HEADS = 384, 12


def graphs(length: int, x: dict[str, np.ndarray]) -> dict:
    from onnx import TensorProto as TP
    from onnx import helper as h
    from onnx import numpy_helper as nh

    d = HIDDEN // HEADS
    vi = h.make_tensor_value_info
    qkv = [vi(n, TP.FLOAT, [1, length, HIDDEN]) for n in "qkv"]
    out = [vi("y", TP.FLOAT, [1, length, HIDDEN])]
    scales = {"sq": np.abs(x["q"]).max() / 127, "sk": np.abs(x["k"]).max() / 127, "sv": np.abs(x["v"]).max() / 127}

    def const(name, value, dtype=np.float32):
        return nh.from_array(np.array(value, dtype), name)

    inits = [const("shape4", [0, 0, HEADS, d], np.int64), const("shape3", [0, 0, HIDDEN], np.int64),
             const("root", 1 / np.sqrt(d)), const("i127", 1 / 127), const("zero8", 0, np.int8),
             const("zerou", 0, np.uint8), const("zq", 128, np.uint8), const("p_scale", 1 / 255), const("tiny", 1e-9),
             const("sq", scales["sq"]), const("sqd", scales["sq"] / np.sqrt(d)), const("sk", scales["sk"]),
             const("sv", scales["sv"])]

    def model(nodes, inputs=qkv, opset=23):
        return h.make_model(h.make_graph(nodes, "g", inputs, out, inits),
                            opset_imports=[h.make_opsetid("", opset), h.make_opsetid("com.microsoft", 1)])

    def heads(t, perm):
        return [h.make_node("Reshape", [t, "shape4"], [f"{t}4"]), h.make_node("Transpose", [f"{t}4"], [f"{t}h"], perm=perm)]

    def core(quantize, q_scale, q_zero, k_scale, v_scale):
        return quantize + heads("qq", [0, 2, 1, 3]) + heads("kq", [0, 2, 3, 1]) + heads("vq", [0, 2, 1, 3]) + [
            h.make_node("MatMulIntegerToFloat", ["qqh", "kqh", q_scale, k_scale, q_zero, "zero8"], ["scores"],
                        domain="com.microsoft"),
            h.make_node("Softmax", ["scores"], ["p"], axis=-1),
            h.make_node("QuantizeLinear", ["p", "p_scale", "zerou"], ["pq"]),
            h.make_node("MatMulIntegerToFloat", ["pq", "vqh", "p_scale", v_scale, "zerou", "zero8"], ["ctx"],
                        domain="com.microsoft"),
            h.make_node("Transpose", ["ctx"], ["ctxt"], perm=[0, 2, 1, 3]), h.make_node("Reshape", ["ctxt", "shape3"], ["y"])]

    def symmetric(t):  # per-tensor int8, scale max|t| / 127, at run time
        return [h.make_node("ReduceMax", [t], [f"{t}_max"], keepdims=0), h.make_node("ReduceMin", [t], [f"{t}_min"], keepdims=0),
                h.make_node("Neg", [f"{t}_min"], [f"{t}_neg"]), h.make_node("Max", [f"{t}_max", f"{t}_neg", "tiny"], [f"{t}_abs"]),
                h.make_node("Mul", [f"{t}_abs", "i127"], [f"{t}_scale"]),
                h.make_node("QuantizeLinear", [t, f"{t}_scale", "zero8"], [f"{t}q"])]

    attention = {"q_num_heads": HEADS, "kv_num_heads": HEADS}
    mask = vi("mask", TP.BOOL, [1, 1, length, length])
    lengths = vi("lengths", TP.INT64, [1])
    dynamic = [h.make_node("DynamicQuantizeLinear", ["q"], ["qq", "q_scale0", "q_zero"]),
               h.make_node("Mul", ["q_scale0", "root"], ["q_scale"])] + symmetric("k") + symmetric("v")
    static = [h.make_node("QuantizeLinear", ["q", "sq", "zq"], ["qq"]), h.make_node("QuantizeLinear", ["k", "sk", "zero8"], ["kq"]),
              h.make_node("QuantizeLinear", ["v", "sv", "zero8"], ["vq"])]
    return {
        "fp32 Attention-23, no mask": (model([h.make_node("Attention", ["q", "k", "v"], ["y"], **attention)]), {}),
        "fp32 Attention-23, bool mask (1,1,S,S)": (
            model([h.make_node("Attention", ["q", "k", "v", "mask"], ["y"], **attention)], qkv + [mask]),
            {"mask": np.ones((1, 1, length, length), bool)}),
        "fp32 Attention-24, nonpad_kv_seqlen": (
            model([h.make_node("Attention", ["q", "k", "v", "", "", "", "lengths"], ["y"], **attention)], qkv + [lengths],
                  opset=24), {"lengths": np.array([length], np.int64)}),
        "int8 core, dynamic scales": (model(core(dynamic, "q_scale", "q_zero", "k_scale", "v_scale")), {}),
        "int8 core, static scales": (model(core(static, "sqd", "zq", "sk", "sv")), {}),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--calls", type=int, default=300, help="measured calls per graph")
    args = parser.parse_args()
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    # the spread of the fine-tuned MiniLM's projections (max |q|, |k| ~6-9, |v| ~4 on training rows)
    x = {k: (rng.normal(size=(1, args.length, HIDDEN)) * (2.5 if k != "v" else 1.0)).astype(np.float32) for k in "qkv"}
    sessions, feeds = {}, {}
    for name, (model, extra) in graphs(args.length, x).items():
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads, options.log_severity_level = 1, 1, 3
        sessions[name] = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        feeds[name] = {**x, **extra}
    reference = sessions["fp32 Attention-23, no mask"].run(None, feeds["fp32 Attention-23, no mask"])[0]
    times: dict[str, list[float]] = {name: [] for name in sessions}
    names = list(sessions)
    for _ in range(args.calls // 2):
        names = names[1:] + names[:1]
        for name in names:
            for _ in range(2):
                started = time.thread_time()
                sessions[name].run(None, feeds[name])
                times[name].append(time.thread_time() - started)
    print(f"(1, {args.length}, {HIDDEN}), {HEADS} heads, 1 thread; 1-minute load {os.getloadavg()[0]:.2f}")
    for name, values in times.items():
        diff = float(np.abs(sessions[name].run(None, feeds[name])[0] - reference).max())
        print(f"  {name:40s} thread CPU p50 {statistics.median(values) * 1e3:7.3f} ms   max |diff| {diff:.4f}")


if __name__ == "__main__":
    main()
