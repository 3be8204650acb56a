"""Static int8's input layer: fp32 where that is measured faster on this machine (`dlforge quantize --input-layer`).

A network's first convolution reads the image (through the graph's own scaling/normalisation): 1 or 3 input
channels, so each output sums 9-27 products, too few for an int8 kernel to amortise its quantize/im2col work. On the
2-core AVX2 EPYC the MNIST CNN's first QLinearConv took 35 us against 13 us for onnxruntime's fp32 NCHWc convolution.
So static mode also builds the variant with that convolution and the activation/pool ops after it in fp32, with
onnxruntime's QDQPropagationTransformer off for that graph (recorded in its export.json, applied by the onnx
runtime: the pass would move the QuantizeLinear above the fp32 max-pool, a uint8 NCHW max-pool 4-8x slower), times
both at batch 1 on this machine, interleaved, and keeps the mixed graph only when it is at least 5% faster and
within the accuracy budget (MNIST CNN there: 0.067 against 0.086 ms; EfficientNet-Lite0: no difference, so all
int8; benchmarks/compress.md, stop 30). export.json's `quantization.input_layer` gives both times and the decision.
"""

from __future__ import annotations

import time

import numpy as np

# What may follow the input convolution and stays fp32 with it (up to the next weighted layer), and what may sit
# between the graph's input and that convolution (its scaling and normalisation, with constant operands).
INPUT_LAYER_FOLLOWERS = ("Relu", "Clip", "LeakyRelu", "HardSigmoid", "HardSwish", "Sigmoid", "MaxPool", "AveragePool")
INPUT_PREPROCESSING = ("Mul", "Add", "Sub", "Div", "Cast", "Identity")
INPUT_LAYER_CHOICES = ("auto", "int8", "fp32")
INPUT_LAYER_OFF = ("QDQPropagationTransformer",)  # onnxruntime optimizers off for a graph whose input layer is fp32
INPUT_LAYER_MARGIN = 0.05  # the mixed graph must be this much faster at batch 1 to be kept
INPUT_LAYER_SECONDS = 1.0  # timing budget per graph for that decision


def input_layer(model) -> list[str]:
    """The node names of the model's input layer: the first Conv reading a graph input (directly or through
    elementwise ops with constant operands: scaling, normalisation) and the activation and pooling nodes after it up
    to the next weighted layer, each the only consumer of the one before; [] when the model has no such Conv."""
    derived = {i.name for i in model.graph.input}
    constants = {i.name for i in model.graph.initializer} | {o for n in model.graph.node if n.op_type == "Constant"
                                                               for o in n.output}
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    first = None
    for node in model.graph.node:  # topological order
        if node.op_type == "Conv" and node.input[0] in derived:
            first = node
            break
        if (node.op_type in INPUT_PREPROCESSING and any(i in derived for i in node.input)
                and all(i in derived or i in constants for i in node.input if i)):
            derived.update(node.output)
    if first is None:
        return []
    chain, node = [first.name], first
    while len(after := consumers.get(node.output[0], [])) == 1 and after[0].op_type in INPUT_LAYER_FOLLOWERS:
        node = after[0]
        chain.append(node.name)
    return chain


def _race(sessions: dict, feed: dict, seconds: float) -> dict[str, float]:
    """p50 ms per session at batch 1 on `feed`: the sessions take turns in bursts (10 calls, fewer for a slow model),
    the order rotating, after a warm-up; about `seconds` each, 20 to 2,000 calls: the same machine state for all."""
    for session in sessions.values():
        for _ in range(3):
            session.run(None, feed)
    started = time.perf_counter()
    next(iter(sessions.values())).run(None, feed)
    calls = max(20, min(2000, int(seconds / max(time.perf_counter() - started, 1e-6))))
    burst = max(1, min(10, calls // 10))
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for r in range(calls // burst):
        names = list(sessions)[r % len(sessions):] + list(sessions)[:r % len(sessions)]
        for name in names:
            for _ in range(burst):
                started = time.perf_counter()
                sessions[name].run(None, feed)
                times[name].append(time.perf_counter() - started)
    return {name: 1e3 * float(np.median(values)) for name, values in times.items()}


def place_input_layer(quantizer, data: bytes, exclude: list[str], *, max_drop: float, drop: float,
                       error: float, forced: bool = False) -> tuple[bytes, float, float, dict | None]:
    """(graph, drop, error, placement) for a compress/quantize.py Quantizer: the graph with the input layer fp32 when that is at least
    INPUT_LAYER_MARGIN faster at batch 1 here and within `max_drop` (always when `forced`), else `data` as it was.
    placement records both times and the decision (None: no input convolution, or the fallback kept it fp32)."""
    nodes = input_layer(quantizer.onnx.load(str(quantizer.float_path)))
    if not nodes or nodes[0] in exclude:
        if forced:
            quantizer.notes.append("--input-layer fp32: " + ("the fallback keeps the input convolution fp32 already"
                                                             if nodes else "no convolution reads the graph's input"))
        return data, drop, error, None
    mixed = quantizer.quantize(exclude=list(exclude) + nodes)
    mixed_drop, mixed_error = quantizer.measure(mixed, INPUT_LAYER_OFF)
    mixed_runtime = quantizer.runtime(mixed, INPUT_LAYER_OFF)
    runtime = quantizer.runtime(data, ())
    feed = runtime.feed(quantizer.decide_x, slice(0, 1))
    ms = _race({"all_int8": runtime.session, "input_fp32": mixed_runtime.session}, feed, INPUT_LAYER_SECONDS)
    faster = ms["input_fp32"] <= (1 - INPUT_LAYER_MARGIN) * ms["all_int8"]
    keep = forced or (faster and mixed_drop <= max_drop)
    how = f"{ms['input_fp32']:.3f} ms with it fp32 against {ms['all_int8']:.3f} ms all int8 at batch 1 on this CPU"
    if forced:
        how += " (--input-layer fp32)"
    placement = {"nodes": nodes, "op": "Conv", "fp32": keep, "ms_batch1": {k: round(v, 4) for k, v in ms.items()},
                 "metric_drop": {"all_int8": drop, "input_fp32": mixed_drop},
                 "reason": f"{how}: kept fp32" if keep else (
                     f"{how}: int8 (fp32 is not {INPUT_LAYER_MARGIN:.0%} faster)" if not faster else
                     f"{how}, but it loses {mixed_drop:.4f} of the metric (budget {max_drop}): int8")}
    if keep:
        quantizer.graph_off = INPUT_LAYER_OFF
        return mixed, mixed_drop, mixed_error, placement
    return data, drop, error, placement


__all__ = ["INPUT_LAYER_CHOICES", "INPUT_LAYER_OFF", "input_layer", "place_input_layer"]
