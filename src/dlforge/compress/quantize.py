"""`dlforge quantize RUN --mode static|dynamic`: int8 through onnxruntime.quantization, as a variant run directory.

- static: QDQ format, int8 weights per output channel (symmetric), uint8 activations (asymmetric; the x86
  U8S8 kernels) with ranges calibrated once on N training rows (minmax | entropy | percentile, with dlforge's
  histogram settings: compress/calibrate.py), and bias correction of the int8 weights by default
  (compress/bias_correction.py). onnxruntime fuses DequantizeLinear-Conv-QuantizeLinear into QLinearConv when the
  session is built. For conv nets (and MLPs). On an x86 CPU without VNNI those kernels add u8 x s8 products in
  pairs in int16, which saturates with 8-bit weights: there the weights take a 7-bit range by default
  (onnxruntime's reduce_range; --no-reduce-range keeps 8 bits), and the report says why.
- dynamic: int8 weights per output channel, activations quantized per batch at run time (MatMul, LSTM,
  Attention, embedding Gather): for Linear/LSTM/transformer models. Per channel, not per tensor: on the
  fine-tuned MiniLM (2,551 test rows) every layer int8 lost 0.31 points per channel and 1.29 per tensor, at the
  same speed (benchmarks/compress.md), so no layer has to fall back to fp32 there. Conv stays fp32 in this mode
  (onnxruntime's ConvInteger is slower than fp32 Conv on x86, onnxruntime#12854) and is reported so. Gemm (how
  torch's Linear exports) is first rewritten to MatMul + Add, the form the dynamic quantizer takes. A fused
  transformer graph (MiniLM) is quantized with its Q/K/V projections as int8 MatMuls in front of the standard ONNX
  Attention (not QAttention) and its BiasGelu as FastGelu (the tanh approximation): 3.5x -> 3.6-3.9x torch eager at
  128 tokens, test accuracy -0.08 points instead of -0.35 (compress/onnx_export_attention.py; benchmarks/compress.md,
  round 7).

Input layer placement (static, `input_layer`): compress/input_layer.py.

Per-layer fallback: when the variant loses more than `max_drop` of the main metric on the decision rows
(validation rows, else training rows that did not calibrate), each weighted layer's sensitivity is measured
(only that layer int8: error of the logits against fp32) and the most sensitive layers go back to fp32 one by
one until the loss is within budget. Layers the quantizer does not take (an op it has no int8 kernel for in this
mode) stay fp32 too. Both lists are reported with a reason; neither is a crash.

The variant's parity against the fp32 torch model on the test rows (as `dlforge export` checks it) is recorded
in its export.json: rows, max abs diff, top-1 agreement, the main metric on both.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from dlforge.artifact.onnx_runtime import (EXPORT_JSON, GRAPH_OPTIMIZERS_KEY, ONNX_FILE, OnnxRuntime, read_export_json,
                                           read_onnx_bytes)
from dlforge.artifact.predictor import Predictor
from dlforge.compress.bias_correction import apply_shifts, shift_summary, weight_error_shifts
from dlforge.compress.calibrate import calibrate
from dlforge.compress.graph_fold import fold_input_scaling
from dlforge.compress.input_layer import INPUT_LAYER_CHOICES, place_input_layer
from dlforge.compress.onnx_export import compare, export_onnx
from dlforge.compress.rows import encode_rows, evaluation_rows, main_metric, run_splits, sample, score, take
from dlforge.compress.variants import variant_dir, write_variant
from dlforge.core.errors import DlforgeError
from dlforge.core.files import write_bytes, write_json

MODES = ("static", "dynamic", "qat")
CALIBRATIONS = ("minmax", "entropy", "percentile")
WEIGHTED_OPS = {"static": ("Conv", "ConvTranspose", "Gemm", "MatMul"),
                "dynamic": ("MatMul", "LSTM", "Attention", "Gather", "EmbedLayerNormalization")}
DECISION_ROWS = 500
MIN_DECISION_ROWS = 50  # fewer rows left outside calibration than this: the decision uses every training row
# The op types static int8 quantizes (and whose tensors are calibrated): the weighted ones and what sits between them.
STATIC_OP_TYPES = list(WEIGHTED_OPS["static"]) + ["Relu", "Clip", "MaxPool", "AveragePool", "Add", "Mul", "Reshape",
                                                  "Flatten", "Transpose", "Concat", "GlobalAveragePool", "Sigmoid"]
MAX_SENSITIVITY_LAYERS = 24  # the largest layers are measured; the rest stay int8 (each measurement quantizes once)


class _NoPreProcessNag(logging.Filter):
    """onnxruntime's quantizer warns on the root logger when it cannot tell that a graph was pre-processed: dlforge
    pre-processes every graph it can (a fused transformer graph is quantized as exported on purpose, and a folded
    graph was pre-processed before the fold); the quantize notes say which."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        return not ("consider" in message and "pre-processing" in message)


_NO_PRE_PROCESS_NAG = _NoPreProcessNag()


VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


def no_vnni_note(cpuinfo: str | None = None) -> str | None:
    """A note for the report when this x86 CPU lacks VNNI (None elsewhere): onnxruntime's U8S8 kernels then add
    u8 x s8 products in pairs in int16 (vpmaddubsw), which saturates, and the int8 accuracy measured here is below
    what the same file gets on a VNNI CPU (EfficientNet transfer: mean logit error 0.50 here against 0.08 for the
    same graph computed exactly; benchmarks/compress.md, round 10)."""
    import platform

    from dlforge.core.machine import cpu_flags

    if cpuinfo is None and platform.machine().lower() not in ("x86_64", "amd64"):
        return None
    flags = cpu_flags(cpuinfo)
    if not flags or flags & set(VNNI_FLAGS):
        return None
    return ("this CPU has no VNNI (avx512_vnni / avx_vnni): onnxruntime's int8 kernels add products in pairs in int16 "
            "and can saturate with 8-bit weights")


class QuantizeError(DlforgeError):
    """A model cannot be quantized as asked."""


def _quant():
    try:
        import onnx
        from onnxruntime import quantization
    except ImportError:
        raise DlforgeError("int8 quantization needs onnx and onnxruntime", hint="pip install 'dlforge[onnx]'") from None
    return onnx, quantization


def gemm_to_matmul(model) -> int:
    """Rewrite Gemm(A, B, C) with constant B (alpha = beta = 1) as MatMul(A, B') + C in place; returns how many."""
    onnx, _ = _quant()
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    nodes, changed = [], 0
    for node in model.graph.node:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if (node.op_type != "Gemm" or node.input[1] not in inits or attrs.get("transA", 0)
                or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0):
            nodes.append(node)
            continue
        weight = numpy_helper.to_array(inits[node.input[1]])
        if attrs.get("transB", 0):
            weight = weight.T
        name = f"{node.name}_weight_t"
        model.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(weight), name))
        product = f"{node.output[0]}_matmul" if len(node.input) > 2 and node.input[2] else node.output[0]
        nodes.append(onnx.helper.make_node("MatMul", [node.input[0], name], [product], name=node.name))
        if product != node.output[0]:
            nodes.append(onnx.helper.make_node("Add", [product, node.input[2]], [node.output[0]], name=f"{node.name}_bias"))
        changed += 1
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return changed


def weighted_nodes(model, mode: str) -> list[dict]:
    """The layers with weights the mode could make int8: name, op, weight name and size, largest first."""
    inits = {i.name: int(np.prod(i.dims)) for i in model.graph.initializer}
    for node in model.graph.node:  # in a QDQ graph a weight is a DequantizeLinear of an int8 initializer
        if node.op_type == "DequantizeLinear" and node.input[0] in inits:
            inits[node.output[0]] = inits[node.input[0]]
    found = []
    for node in model.graph.node:
        if node.op_type not in WEIGHTED_OPS["static"] + WEIGHTED_OPS["dynamic"] + ("GRU", "RNN"):
            continue
        weights = [i for i in node.input[1:] if i in inits] if node.op_type != "Gather" else (
            [node.input[0]] if node.input[0] in inits else [])
        if weights:
            found.append({"node": node.name, "op": node.op_type, "weight": weights[0], "size": inits[weights[0]]})
    return sorted(found, key=lambda n: -n["size"])


def qdq_float_layers(model, layers: list[dict]) -> set[str]:
    """Names of `layers` of a QDQ graph whose weight does not come from a DequantizeLinear (still fp32)."""
    dequantized = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return {layer["node"] for layer in layers if layer["weight"] not in dequantized}


def still_float(model, layers: list[dict]) -> set[str]:
    """Names of `layers` the quantized `model` still runs in fp32 (same node, same float weight initializer)."""
    by_name = {n.name: n for n in model.graph.node}
    floats = {i.name for i in model.graph.initializer if i.data_type == 1}
    kept = set()
    for layer in layers:
        node = by_name.get(layer["node"])
        if node is not None and node.op_type == layer["op"] and layer["weight"] in node.input and layer["weight"] in floats:
            kept.add(layer["node"])
    return kept


def calibration_method(q, name: str):
    """onnxruntime's CalibrationMethod for a dlforge --calibration name."""
    return {"minmax": q.CalibrationMethod.MinMax, "entropy": q.CalibrationMethod.Entropy,
            "percentile": q.CalibrationMethod.Percentile}[name]


def _numpy(x: dict[str, torch.Tensor], record: dict) -> dict[str, np.ndarray]:
    dtypes = {i["name"]: np.dtype(i["dtype"]) for i in record["inputs"]}
    return {name: np.ascontiguousarray(x[name].numpy(), dtype=dtypes[name]) for name in dtypes}


def dynamic_ops(model) -> list[str]:
    """The op types quantize_dynamic takes in `model`: 'Attention' only while a com.microsoft Attention (QAttention's
    source) is in the graph; the standard ONNX Attention has no weights (the Q/K/V MatMuls in front are quantized)."""
    keep_attention = any(n.op_type == "Attention" and n.domain == "com.microsoft" for n in model.graph.node)
    return [op for op in WEIGHTED_OPS["dynamic"] if op != "Attention" or keep_attention]


class Quantizer:
    """One run's fp32 graph, rows and reference logits: quantizes with a set of layers kept fp32, and measures."""

    def __init__(self, run_dir: Path, *, mode: str, calibration: str, calibration_rows: int, threads: int | None,
                 folder: Path):
        onnx, self.q = _quant()
        self.onnx = onnx
        self.run_dir, self.mode, self.calibration, self.threads, self.folder = run_dir, mode, calibration, threads, folder
        self.record = read_export_json(run_dir)
        data = read_onnx_bytes(run_dir, self.record)
        self.predictor = Predictor(run_dir, runtime="torch")
        self.notes: list[str] = []
        # Preprocessing (symbolic shape inference, graph optimisation) as onnxruntime recommends before quantizing.
        source, self.float_path = folder / "fp32.onnx", folder / "fp32-pre.onnx"
        source.write_bytes(data)
        if (self.record.get("transformer_fusion") or {}).get("applied"):
            # onnxruntime's fused transformer ops (compress/onnx_export.py) are quantized as exported, as Optimum
            # does: EmbedLayerNormalization -> QEmbedLayerNormalization (int8 word embeddings), the Q/K/V MatMuls
            # in front of each ONNX Attention -> MatMulIntegerToFloat (a com.microsoft Attention left by an export
            # older than round 7 is rewritten so first; QAttention is slower, onnx_export_attention.py);
            # quant_pre_process's optimisation pass is for plain graphs.
            self.float_path = source
            self.notes.append("onnxruntime-fused transformer graph: quantized as exported")
            if mode == "dynamic":
                self._rewrite_transformer(onnx, folder)
        else:
            try:
                # In the scratch folder: when symbolic shape inference is incomplete, onnxruntime saves a debug copy
                # of the model (with its weights) into the working directory.
                with contextlib.chdir(folder):
                    self.q.shape_inference.quant_pre_process(str(source), str(self.float_path), auto_merge=True)
            except Exception as exc:  # shape inference fails on some graphs: quantize the graph as exported
                self.notes.append(f"quant_pre_process skipped ({exc.__class__.__name__}: {str(exc)[:120]})")
                self.float_path = source
        model = onnx.load(str(self.float_path))
        if mode == "dynamic" and (count := gemm_to_matmul(model)):
            self.notes.append(f"{count} Gemm rewritten as MatMul + Add for the dynamic quantizer")
            onnx.save(model, str(self.float_path))
        if mode == "static" and (folded := fold_input_scaling(model)):  # one int8 operator less per call
            self.notes.extend(folded)
            self.float_path = folder / "fp32-folded.onnx"
            onnx.save(model, str(self.float_path))
        self.layers = weighted_nodes(model, mode)
        self.ops = dynamic_ops(model) if mode == "dynamic" else None
        # Rows: calibration from training rows; decisions on validation rows, else other training rows.
        table, rows = run_splits(self.predictor)
        train = np.asarray(rows["train"])
        calib = sample(train, calibration_rows, seed=1)
        decide = rows.get("val", np.zeros(0, dtype=np.int64))
        self.decide_part = "validation"
        if not len(decide):
            decide = np.setdiff1d(train, calib)
            self.decide_part = "training (not calibration)"
            if len(decide) < MIN_DECISION_ROWS:  # a small data set, all of it calibrating: decide on every row
                decide = train
                self.decide_part = "training (calibration rows included)"
                self.notes.append(f"no validation rows and {len(np.setdiff1d(train, calib))} training rows left "
                                  f"after calibration: the fallback decides on all {len(train)} training rows")
        decide = sample(decide, DECISION_ROWS, seed=2)
        scaled = bool(self.record.get("scaled_in_graph"))
        self.calib_x = _numpy(encode_rows(self.predictor, take(self.predictor, table, calib), scaled=not scaled)[0],
                              self.record) if mode == "static" else None
        self.n_calib = len(calib) if mode == "static" else 0
        self._ranges: Path | None = None
        self.bias_shift: dict[str, np.ndarray] = {}
        self.reduce_range = False  # 7-bit weights: no int16 saturation in the U8S8 kernels of x86 CPUs without VNNI
        self.calibration_summary: dict | None = None
        self.graph_off: tuple[str, ...] = ()  # onnxruntime optimizers off for the chosen graph (compress/input_layer.py)
        decide_table = take(self.predictor, table, decide)
        self.decide_ref, self.decide_y = encode_rows(self.predictor, decide_table, scaled=True)
        self.decide_x = encode_rows(self.predictor, decide_table, scaled=False)[0] if scaled else self.decide_ref
        with torch.no_grad():
            self.reference = self.predictor.runtime.run(self.decide_ref)
        _, self.reference_metric, self.direction = main_metric(self.predictor, score(self.predictor, self.reference,
                                                                                     self.decide_y))

    def _rewrite_transformer(self, onnx, folder: Path) -> None:
        """The fused transformer graph as dynamic int8 runs it fastest (compress/onnx_export_attention.py): any
        com.microsoft Attention as Q/K/V MatMuls + ONNX Attention, a round-7 If around it as the one opset-24
        Attention with row lengths, BiasGelu as FastGelu (the tanh approximation)."""
        from dlforge.compress.onnx_export_attention import (ONNX_ATTENTION_OPSET, fast_gelu, lengths_attention,
                                                            onnx_attention)

        model = onnx.load(str(self.float_path))
        attention, lengths, gelu = onnx_attention(model), lengths_attention(model), fast_gelu(model)
        if attention or lengths:
            self.record = {**self.record, "opset": ONNX_ATTENTION_OPSET}
        if attention:
            self.notes.append(f"{attention} com.microsoft Attention op(s) rewritten as Q/K/V MatMuls + ONNX Attention "
                              f"(opset {ONNX_ATTENTION_OPSET}): the projections int8, the faster attention kernel")
        if lengths:
            self.notes.append(f"{lengths} If(unpadded) around ONNX Attention rewritten as one ONNX Attention taking "
                              f"each row's key length (opset {ONNX_ATTENTION_OPSET}; fewer nodes, same values)")
        if gelu:
            self.notes.append(f"{gelu} BiasGelu op(s) as FastGelu (tanh approximation of GELU; faster, and within "
                              "int8's error: the accuracy below is measured with it)")
        if attention or lengths or gelu:
            self.float_path = folder / "fp32-rewritten.onnx"
            onnx.save(model, str(self.float_path))

    def quantize(self, *, exclude: list[str] = (), only: list[str] | None = None) -> bytes:
        q = self.q
        out = self.folder / "int8.onnx"
        try:
            logging.getLogger().addFilter(_NO_PRE_PROCESS_NAG)  # once: adding the same filter again is a no-op
            if self.mode == "static":
                cache = self.ranges()  # calibrated once; every call (probes, fallback steps) reads the same ranges
                q.quantize_static(str(self._corrected(set(exclude), only)), str(out), None, quant_format=q.QuantFormat.QDQ,
                                  per_channel=True, reduce_range=self.reduce_range, activation_type=q.QuantType.QUInt8,
                                  weight_type=q.QuantType.QInt8, calibrate_method=calibration_method(q, self.calibration),
                                  calibration_cache_path=str(cache), nodes_to_exclude=list(exclude),
                                  nodes_to_quantize=only, op_types_to_quantize=STATIC_OP_TYPES,
                                  extra_options={"ActivationSymmetric": False, "WeightSymmetric": True,
                                                 "MatMulConstBOnly": True})
            else:
                q.quantize_dynamic(str(self.float_path), str(out), per_channel=True, weight_type=q.QuantType.QInt8,
                                   op_types_to_quantize=self.ops, nodes_to_exclude=list(exclude),
                                   nodes_to_quantize=only, extra_options={"MatMulConstBOnly": True,
                                                  # the fused ops' outputs carry no inferred type
                                                  "DefaultTensorType": self.onnx.TensorProto.FLOAT})
        except Exception as exc:  # the quantizer's own failure: one clear error, never a traceback
            raise QuantizeError(f"onnxruntime could not quantize this model ({self.mode}): "
                                f"{exc.__class__.__name__}: {str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ''}",
                                where=str(self.run_dir / ONNX_FILE),
                                hint="try the other --mode, or serve the fp32 export (--runtime onnx)") from None
        return out.read_bytes()

    def correct_bias(self, data: bytes) -> dict:
        """Measure the bias correction of every layer int8 in `data` (a graph quantized with every layer int8) on
        the calibration rows (compress/bias_correction.py); later `quantize` calls apply it to the layers they
        make int8 and leave the fp32 layers' biases as they are."""
        self.bias_shift = weight_error_shifts(self.onnx.load(str(self.float_path)), self.onnx.load_from_string(data),
                                              self.calib_x, threads=self.threads)
        summary = shift_summary(self.bias_shift, len(next(iter(self.calib_x.values()))))
        if summary["layers"]:
            self.notes.append(f"bias correction: the mean output shift of the int8 weights, measured on "
                              f"{summary['rows']} calibration rows, taken off the bias of {summary['layers']} layers "
                              f"(largest |shift| {summary['largest_shift']:.3g}, in {summary['largest_in']})")
        return summary

    def _corrected(self, exclude, only) -> Path:
        """The fp32 graph with the bias correction of every layer this call makes int8 (the others keep theirs)."""
        if not self.bias_shift:
            return self.float_path
        chosen = {k: v for k, v in self.bias_shift.items() if k not in exclude and (only is None or k in only)}
        model = self.onnx.load(str(self.float_path))
        apply_shifts(model, chosen)
        path = self.folder / "fp32-bias-corrected.onnx"
        self.onnx.save(model, str(path))
        return path

    def ranges(self) -> Path:
        """The activation ranges (onnxruntime's calibration cache), calibrated on the first call (compress/calibrate.py)."""
        if self._ranges is None:
            self._ranges, self.calibration_summary = calibrate(self.float_path, self.calib_x, method=self.calibration,
                                                               op_types=STATIC_OP_TYPES, folder=self.folder)
        return self._ranges

    def runtime(self, data: bytes, off: tuple[str, ...] | None = None) -> OnnxRuntime:
        """`data` on onnxruntime, with the optimizers `off` (default: the chosen graph's, `graph_off`) turned off."""
        record = {**self.record, "onnx": {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}}
        off = self.graph_off if off is None else off
        if off:
            record[GRAPH_OPTIMIZERS_KEY] = list(off)
        return OnnxRuntime(self.run_dir, batch_size=self.predictor.batch_size, threads=self.threads, record=record,
                           data=data)

    def measure(self, data: bytes, off: tuple[str, ...] | None = None) -> tuple[float, float]:
        """(loss of the main metric against fp32 torch on the decision rows, mean abs logit error)."""
        logits = self.runtime(data, off).run(self.decide_x)
        _, value, _ = main_metric(self.predictor, score(self.predictor, logits, self.decide_y))
        error = float(np.mean([float((logits[n] - ref).abs().mean()) for n, ref in self.reference.items()]))
        return (self.reference_metric - value) * self.direction, error


def quantize_run(run_dir: str | Path, *, mode: str = "auto", calibration: str = "minmax", calibration_rows: int = 256,
                 max_drop: float = 0.005, name: str | None = None, overwrite: bool = False, threads: int | None = None,
                 parity_rows: int = 1000, out_dir: Path | None = None, qat_epochs: int = 1,
                 qat_lr: float | None = None, bias_correction: bool | None = None, reduce_range: bool | None = None,
                 input_layer: str = "auto") -> dict:
    """Quantize `run_dir`'s ONNX export (exported first if it has none) into `RUN/variants/<name>/`, or into
    `out_dir` (a new complete run directory, not listed in the source's run.json: what compression passes use).

    `bias_correction`: None = on in static mode (it lowered the mean logit error on held-out rows by 27-28% on
    EfficientNet transfer, 3 seeds; benchmarks/compress.md, round 10), off otherwise. `reduce_range` (static: 7-bit
    weights): None = on when this x86 CPU has no VNNI (its int8 kernels saturate: the held-out logit error of that
    model went from 0.53-0.57 to 0.09-0.10 with it and bias correction), off elsewhere. `input_layer` (static): the
    first convolution "int8", "fp32", or "auto" (fp32 when measured faster here and within `max_drop`: module
    docstring).

    Returns the variant's export.json content; its `quantization` entry says what was done."""
    run_dir = Path(run_dir)
    if calibration not in CALIBRATIONS:
        raise QuantizeError(f"unknown calibration '{calibration}'; known: {', '.join(CALIBRATIONS)}", where="--calibration")
    if mode == "qat":
        from dlforge.compress.qat import qat_onnx, torchao_pt2e

        torchao_pt2e()  # a missing torchao says so before anything is exported
    if calibration_rows < 1:
        raise QuantizeError("--calibration-rows must be at least 1", where="--calibration-rows")
    if reduce_range and mode in ("dynamic", "qat"):
        raise QuantizeError(f"--reduce-range is for --mode static; --mode {mode} chooses its own weight range",
                            where="--reduce-range", hint="use --mode static (or auto on a conv net)")
    if bias_correction and mode in ("dynamic", "qat"):
        raise QuantizeError(f"--bias-correction corrects calibrated static int8; --mode {mode} has no calibration rows",
                            where="--bias-correction", hint="use --mode static (or auto on a conv net)")
    if input_layer not in INPUT_LAYER_CHOICES:
        raise QuantizeError(f"unknown --input-layer '{input_layer}'; known: {', '.join(INPUT_LAYER_CHOICES)}",
                            where="--input-layer")
    if input_layer != "auto" and mode in ("dynamic", "qat"):
        raise QuantizeError(f"--input-layer places static int8's first convolution; --mode {mode} has no such choice",
                            where="--input-layer", hint="use --mode static (or auto on a conv net)")
    if mode not in MODES + ("auto",):
        raise QuantizeError(f"unknown mode '{mode}'; known: static, dynamic, qat (or auto)", where="--mode")
    started = time.perf_counter()
    exported = None
    if not (run_dir / ONNX_FILE).is_file():
        from dlforge.artifact.format import read_model_json

        read_model_json(run_dir)  # a missing or incomplete run says so before anything is exported
        exported = export_onnx(run_dir, threads=threads)
    with tempfile.TemporaryDirectory(prefix=".quantize-", dir=run_dir) as tmp:
        folder = Path(tmp)
        if mode == "auto":
            probe_onnx, _ = _quant()
            ops = {n.op_type for n in probe_onnx.load_from_string(read_onnx_bytes(run_dir, read_export_json(run_dir))).graph.node}
            mode = "static" if "Conv" in ops else "dynamic"
        quantizer = Quantizer(run_dir, mode=mode, calibration=calibration, calibration_rows=calibration_rows,
                              threads=threads, folder=folder)
        note = no_vnni_note() if mode == "static" else None
        if reduce_range is None:
            reduce_range = note is not None
            if note:
                quantizer.notes.append(note + ": weights in the 7-bit range here (--no-reduce-range for all 8 bits)")
        elif note and not reduce_range:
            quantizer.notes.append(note + "; --reduce-range (7-bit weights) avoids that")
        quantizer.reduce_range = reduce_range
        qat_info = None
        if mode == "qat":  # fake-quantized fine-tuning; its result is the int8 graph (no per-layer fallback)
            # the run's export opset, at most 23: a fused transformer export is at 24 (its ONNX Attention), which the
            # TorchScript exporter (to_onnx's fallback) does not take; the QAT graph has no Attention op
            data, qat_info = qat_onnx(run_dir, epochs=qat_epochs, lr=qat_lr, folder=folder,
                                      opset=min(quantizer.record.get("opset", 20), 23))
        else:
            data = quantizer.quantize()
        bias_summary = None
        if bias_correction is None:
            bias_correction = mode == "static"
        if bias_correction:
            if mode != "static":
                raise QuantizeError(f"--bias-correction corrects calibrated static int8; this model quantizes {mode} "
                                    "(no convolutions)", where="--bias-correction", hint="drop --bias-correction")
            bias_summary = quantizer.correct_bias(data)
            data = quantizer.quantize()
        drop, error = quantizer.measure(data)
        fallback: list[dict] = []
        if mode != "qat" and drop > max_drop and quantizer.layers:
            fallback = _fall_back(quantizer, max_drop, drop)
            excluded = [f["node"] for f in fallback]
            data = quantizer.quantize(exclude=excluded)
            drop, error = quantizer.measure(data)
        placement = None
        if mode == "static" and input_layer != "int8":
            data, drop, error, placement = place_input_layer(quantizer, data, [f["node"] for f in fallback],
                                                              max_drop=max_drop, drop=drop, error=error,
                                                              forced=input_layer == "fp32")
        model = quantizer.onnx.load_from_string(data)
        if mode == "qat":  # a new graph (its node names are not the fp32 export's): read the QDQ weights directly
            quantizer.layers = weighted_nodes(model, mode)
            kept = qdq_float_layers(model, quantizer.layers)
        else:
            kept = still_float(model, quantizer.layers)
        excluded_names = {f["node"] for f in fallback} | set(placement["nodes"] if placement and placement["fp32"] else ())
        unsupported = [{"node": layer["node"], "op": layer["op"],
                        "reason": ("dynamic int8 convolutions are slower than fp32 in onnxruntime (#12854): kept fp32"
                                   if mode == "dynamic" and layer["op"] in ("Conv", "ConvTranspose")
                                   else f"onnxruntime's {mode} quantizer has no int8 {layer['op']}: kept fp32")}
                       for layer in quantizer.layers if layer["node"] in kept and layer["node"] not in excluded_names]
        n_int8 = len(quantizer.layers) - len(kept)
        if n_int8 == 0:
            raise QuantizeError(f"no layer of this model could be made int8 in {mode} mode "
                                f"({len(fallback)} lost too much, {len(unsupported)} unsupported: "
                                f"{', '.join(sorted({u['op'] for u in unsupported})) or '-'})",
                                where=str(run_dir), hint="try the other --mode, or a larger --max-drop")
        # Parity of the variant against the fp32 torch model, on the test rows, as export checks it.
        predictor = quantizer.predictor
        split, table = evaluation_rows(predictor, parity_rows)
        x_ref, y = encode_rows(predictor, table, scaled=True)
        x_raw = encode_rows(predictor, table, scaled=False)[0] if quantizer.record.get("scaled_in_graph") else x_ref
        with torch.no_grad():
            reference = predictor.runtime.run(x_ref)
        runtime = quantizer.runtime(data)
        parity = {"split": split, **compare(predictor, reference, runtime.run(x_raw), y)}
        fp32_bytes = quantizer.record["onnx"]["bytes"]
        quantization = {
            "mode": mode, "format": "IntegerOps" if mode == "dynamic" else "QDQ",
            "weights": "int8, per channel" if mode == "dynamic" else (
                "int8 in a 7-bit range (reduce range), per channel, symmetric" if reduce_range
                else "int8, per channel, symmetric"),
            "activations": {"static": "uint8, asymmetric, calibrated", "dynamic": "uint8, per batch at run time",
                            "qat": "uint8, asymmetric, ranges learned in QAT"}[mode],
            "qat": qat_info,
            "calibration": {"method": calibration, "rows": quantizer.n_calib, "from": "training",
                            **{k: v for k, v in (quantizer.calibration_summary or {}).items() if k != "method"}}
            if mode == "static" else None,
            "bias_correction": bias_summary,
            "reduce_range": bool(quantizer.reduce_range) if mode == "static" else None,
            "max_drop": max_drop, "decision_rows": {"part": quantizer.decide_part, "rows": len(quantizer.decide_y[
                next(iter(quantizer.decide_y))])},
            "metric_drop_on_decision_rows": drop, "mean_abs_logit_error": error,
            "int8_layers": n_int8, "fp32_layers": len(kept),
            "fallback": fallback, "unsupported": unsupported, "input_layer": placement, "notes": quantizer.notes,
            "fp32_bytes": fp32_bytes, "int8_bytes": len(data), "size_ratio": fp32_bytes / len(data),
            "seconds": round(time.perf_counter() - started, 2),
        }
    variant_name = name or f"int8_{mode}" + (f"_{calibration}" if mode == "static" and calibration != "minmax" else "")
    if out_dir is None:
        out = variant_dir(run_dir, variant_name, overwrite=overwrite)
    else:
        out = Path(out_dir)
        if out.exists() and any(out.iterdir()):
            raise QuantizeError("the output folder is not empty", where=str(out))
        out.mkdir(parents=True, exist_ok=True)
    record = {**quantizer.record, "onnx": {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()},
              "parity": parity, "session": runtime.settings, "quantization": quantization,
              "exported_now": exported is not None}
    if quantizer.graph_off:
        record[GRAPH_OPTIMIZERS_KEY] = list(quantizer.graph_off)
    record["session"] = {**record["session"], "bytes": len(data), "quantization": mode}
    write_bytes(out / ONNX_FILE, data)
    write_json(out / EXPORT_JSON, record)
    write_variant(run_dir, out, pass_name=f"int8_{mode}", runtime="onnx", listed=out_dir is None,
                  notes={"quantization": {k: quantization[k] for k in ("mode", "calibration", "int8_layers",
                                                                        "fp32_layers", "input_layer", "size_ratio")},
                         "parity": parity})
    record["variant_dir"] = str(out)
    return record


def _fall_back(quantizer: Quantizer, max_drop: float, drop: float) -> list[dict]:
    """Layers back to fp32, most sensitive first, until the loss is within `max_drop` (all measured ones at most)."""
    sensitivity = []
    for layer in quantizer.layers[:MAX_SENSITIVITY_LAYERS]:
        try:
            _, error = quantizer.measure(quantizer.quantize(only=[layer["node"]]))
        except DlforgeError:
            continue
        sensitivity.append((error, layer))
    sensitivity.sort(key=lambda pair: -pair[0])
    chosen: list[dict] = []
    for error, layer in sensitivity:
        chosen.append({"node": layer["node"], "op": layer["op"], "sensitivity": error,
                       "reason": f"int8 lost {drop:.4f} of the metric (budget {max_drop}); this layer alone "
                                 f"changes the logits by {error:.3g} on average: kept fp32"})
        drop, _ = quantizer.measure(quantizer.quantize(exclude=[c["node"] for c in chosen]))
        if drop <= max_drop:
            break
    return chosen


def describe(record: dict) -> list[str]:
    """What `dlforge quantize` prints."""
    q = record["quantization"]
    parity = record["parity"]
    calib = q["calibration"]
    lines = [f"int8 {q['mode']} ({q['format']}; weights {q['weights']}; activations {q['activations']}"
             + (f"; calibration {calib['method']} on {calib['rows']} training rows" if calib else "") + ")"]
    if calib and calib.get("settings") and calib["method"] != "minmax":
        settings = calib["settings"]
        how = (f"KL threshold over {settings['num_bins']} histogram bins, {settings['num_quantized_bins']} quantized"
               if calib["method"] == "entropy" else
               f"{settings['percentile']} % of each tensor's values, {settings['num_bins']}-bin histogram")
        lines.append(f"calibration: {how}; {calib['clipped_tensors']} of {calib['tensors']} tensors clipped inside "
                     f"their observed range (median kept {calib['median_kept_fraction_of_range']:.0%} of it); "
                     f"{calib['seconds']} s")
    if q.get("bias_correction"):
        b = q["bias_correction"]
        lines.append(f"bias correction: {b['layers']} layers, measured on {b['rows']} calibration rows (largest "
                     f"|shift| {b['largest_shift']:.3g}, in {b['largest_in']})")
    if q.get("qat"):
        t = q["qat"]
        lines.append(f"quantization-aware training: {t['epochs']} epoch(s), {t['steps']} steps on {t['rows']} training "
                     f"rows, lr {t['lr']:.2g}, {t['train_seconds']} s ({t['api']})")
    lines += [
             f"layers: {q['int8_layers']} int8, {q['fp32_layers']} fp32; size {q['fp32_bytes'] / 1e6:.3f} MB -> "
             f"{q['int8_bytes'] / 1e6:.3f} MB ({q['size_ratio']:.2f}x smaller)"]
    lines += [note for note in q["notes"] if note.startswith("this CPU has no VNNI")]
    if q.get("input_layer"):
        entry = q["input_layer"]
        lines.append(f"input layer {entry['nodes'][0]} ({entry['op']}"
                     + (f" + {', '.join(entry['nodes'][1:])}" if len(entry["nodes"]) > 1 else "") + f"): {entry['reason']}")
    for entry in q["fallback"]:
        lines.append(f"fallback to fp32: {entry['node']} ({entry['op']}): {entry['reason']}")
    for entry in q["unsupported"]:
        lines.append(f"fp32: {entry['node']} ({entry['op']}): {entry['reason']}")
    agreement = parity["top1_agreement"]
    lines.append(f"against fp32 torch on {parity['rows']} {parity['split']} rows: max abs diff "
                 f"{parity['max_abs_diff']:.3g}" + (f", top-1 agreement {agreement:.4f}" if agreement is not None else "")
                 + f", {parity['metric']} {parity['metric_torch']:.4f} -> {parity['metric_onnx']:.4f} "
                 f"({parity['metric_change'] * 100:+.2f} points)")
    s = record["session"]
    lines.append(f"onnxruntime {s['onnxruntime']}: {s['intra_op_threads']} intra-op thread(s), "
                 f"{s['inter_op_threads']} inter-op, {s['graph_optimization']}")
    return lines


__all__ = ["CALIBRATIONS", "MODES", "no_vnni_note", "QuantizeError", "Quantizer", "describe", "dynamic_ops", "gemm_to_matmul",
           "quantize_run",
           "still_float", "weighted_nodes"]
