"""`dlforge export RUN --format onnx`: model.onnx beside model.json, refused unless it matches the torch model.

The graph: every input the model takes, in the signature's order, with a dynamic batch axis (and a dynamic
length axis for token inputs whose encoder skips padding, MiniLM/LSTM/GRU: the onnx runtime cuts the unused
padding of each chunk); one float32 output per model output (logits). Image scaling/normalisation is affine per
channel, so it moves into the graph (`x * a + b` in front of the network): the graph takes pixels 0..255 and
export.json lists those inputs under `scaled_in_graph`. Exporter: torch.onnx's dynamo exporter (torch.export +
onnxscript); only if it fails is the TorchScript exporter tried, and export.json states why (the operator the
dynamo exporter named, the fallback taken). Opset DEFAULT_OPSET unless asked.

Transformer encoders (an encoder with `onnx_transformer()`, MiniLM) go another way first, Optimum's: the
TorchScript exporter with eager attention, then onnxruntime's transformer optimizer
(onnxruntime.transformers.optimize_model, model type 'bert'), which fuses each layer's attention into one
`Attention` op and the embeddings and GELUs into `EmbedLayerNormalization` and `BiasGelu`. Each com.microsoft
Attention is then rewritten as Q, K and V MatMul + Add and the standard ONNX `Attention` op (opset 24, the
padding as each row's key length;
compress/onnx_export_attention.py): the same arithmetic, a faster CPU kernel, and dynamic int8 then runs the Q/K/V
projections as int8 MatMuls (before round 7 the whole op became `QAttention`, slower at 128 tokens).
The residual Add + LayerNormalization pairs are deliberately left unfused (and onnxruntime's own SkipLayerNormFusion
is off in every session, artifact/onnx_runtime.py): onnxruntime 1.32's CPU SkipLayerNormalization kernel took 0.66
ms on a 128 x 384 input where Add + LayerNormalization took 0.10 ms (1 thread, AMD EPYC AVX512), 12% of MiniLM's
int8 call at 128 tokens (benchmarks/compress.md).
The dynamo exporter's graph of the same model is not fused (its decomposed SDPA, with or without eager attention,
matches none of the optimizer's attention patterns: measured, 0 of 6). Measured on MiniLM-L6 at batch 1, 1 thread,
128 tokens (benchmarks/compress.md): fp32 1.31x -> 1.41x torch eager, dynamic int8 2.75x -> 3.00x. If the export,
the fusion (every layer's attention must fuse) or the parity check fails, the plain dynamo export is used and
export.json says why (`transformer_fusion`).

Parity, on real rows of the run's own test split (validation rows when it has none): the same rows through
the torch model and through onnxruntime; export.json records rows, max abs diff of the logits, top-1
agreement and the main metric on both. An export outside the tolerances is refused with those numbers, and
nothing is written.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
import tempfile
import time
import warnings
from pathlib import Path

import torch

from dlforge.artifact.onnx_runtime import EXPORT_JSON, ONNX_FILE, OnnxRuntime
from dlforge.artifact.predictor import Predictor
from dlforge.compress.rows import encode_rows, evaluation_rows, main_metric, score
from dlforge.core.errors import DlforgeError
from dlforge.core.files import write_bytes, write_json

DEFAULT_OPSET = 20  # torch 2.13's dynamo exporter default; onnxruntime 1.32 runs up to 23; int8 QDQ needs >= 13
PARITY_ROWS = 1000
# An fp32 export must match: logits within ATOL (relative to the logits' own scale), top-1 on all but near-ties,
# and the same metric.
ATOL = 1e-3
MIN_AGREEMENT = 0.999
METRIC_TOLERANCE = 0.002


class ExportError(DlforgeError):
    """A model cannot be exported, or its export does not match the torch model."""


class ExportGraph(torch.nn.Module):
    """The model as the ONNX graph sees it: positional inputs, affine image scaling in front, a tuple of logits."""

    def __init__(self, model: torch.nn.Module, input_names: list[str], output_names: list[str],
                 scales: dict[str, tuple[torch.Tensor, torch.Tensor]]):
        super().__init__()
        self.model = model
        self.input_names, self.output_names = list(input_names), list(output_names)
        self.scaled = [name in scales for name in self.input_names]
        for i, name in enumerate(self.input_names):
            if name in scales:
                self.register_buffer(f"mul_{i}", scales[name][0])
                self.register_buffer(f"add_{i}", scales[name][1])

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = {}
        for i, (name, value) in enumerate(zip(self.input_names, inputs)):
            x[name] = value * getattr(self, f"mul_{i}") + getattr(self, f"add_{i}") if self.scaled[i] else value
        out = self.model(x)
        return tuple(out[name].float() for name in self.output_names)


def image_scales(predictor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{image input: (a, b)} with scale(x) == x * a + b per channel, checked on three pixel values (the
    scalings dlforge has are all affine; one that is not stays outside the graph)."""
    scales = {}
    for name, feature in predictor.inputs.items():
        if not hasattr(feature, "scale_pixels"):
            continue
        channels = feature.channels_
        probe = torch.tensor([0.0, 1.0, 255.0]).view(3, 1, 1, 1).expand(3, channels, 1, 1).contiguous()
        out = feature.scale_pixels(probe)
        add, mul = out[0], out[1] - out[0]
        if torch.allclose(out[2], 255.0 * mul + add, rtol=1e-5, atol=1e-5) and not (
                torch.all(mul == 1) and torch.all(add == 0)):
            scales[name] = (mul.reshape(1, channels, 1, 1).float(), add.reshape(1, channels, 1, 1).float())
    return scales


def _operators(text: str) -> list[str]:
    """Operator names an exporter's message mentions (aten::lstm, aten._pack_padded_sequence, ...)."""
    return sorted(set(re.findall(r"\b(aten(?:::|\.)[A-Za-z_0-9.]+|prim::[A-Za-z_]+)", text)))


def _first_line(exc: BaseException) -> str:
    """The line that says what went wrong (torch.onnx puts it under "## Exception summary", after a banner)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    if "## Exception summary" in text:
        text = text.split("## Exception summary", 1)[1]
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return (lines[0] if lines else exc.__class__.__name__)[:400]


def unexportable(model: torch.nn.Module) -> str | None:
    """Why a model cannot be exported, found before trying (each exporter fails on it with an unrelated message):
    LSTM/GRU encoders run over packed sequences (aten::_pack_padded_sequence), which neither exporter takes; the
    scatter encoder's transform (kymatio) runs its FFTs on complex views (aten::view_as_complex), which the TorchScript
    exporter does not take, and the dynamo exporter cannot trace it for a variable batch size."""
    from dlforge.models.encoders.scatter import ScatterEncoder

    for name, module in model.named_modules():
        if isinstance(module, ScatterEncoder):
            return (f"its scattering transform ('{name}.backbone', kymatio) computes FFTs on complex tensors (operator "
                    "aten::view_as_complex), which the TorchScript exporter does not take, and the dynamo exporter "
                    "cannot trace it for a variable batch size")
        if isinstance(module, (torch.nn.LSTM, torch.nn.GRU)):
            kind = type(module).__name__
            return (f"its {kind} ('{name}') runs over packed sequences (operator aten::_pack_padded_sequence), which "
                    f"neither the dynamo nor the TorchScript exporter takes")
    return None


def _without_node_metadata(data: bytes) -> bytes:
    """The graph without the dynamo exporter's per-node metadata (source stack traces, module paths: about 1 KB a
    node, paths of this machine); the computation is unchanged."""
    import onnx

    model = onnx.load_from_string(data)
    for node in model.graph.node:
        del node.metadata_props[:]
    return model.SerializeToString()


@contextlib.contextmanager
def quiet_loggers(*names: str):
    """These libraries' INFO/WARNING lines are not the user's business (torch.onnx's "torchvision is not installed.
    Skipping torchvision::nms", onnxruntime.transformers' progress): errors only while the block runs."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def to_onnx(graph: ExportGraph, example: tuple, *, dynamic: dict[str, dict[int, str]], opset: int,
            folder: Path) -> tuple[bytes, dict]:
    """(ONNX bytes, how they were made): the dynamo exporter, else the TorchScript exporter with the reason."""
    path = folder / "graph.onnx"
    names, outputs = graph.input_names, graph.output_names
    how: dict = {"exporter": "dynamo", "opset": opset}
    with warnings.catch_warnings(), quiet_loggers("torch.onnx"):
        warnings.simplefilter("ignore")
        try:
            # forward(*inputs): one entry for the varargs tuple, holding one {axis: Dim} per input
            shapes = (tuple({axis: torch.export.Dim.DYNAMIC for axis in dynamic.get(n, {})} for n in names),)
            program = torch.onnx.export(graph, example, dynamo=True, input_names=names, output_names=outputs,
                                        opset_version=opset, dynamic_shapes=shapes, optimize=True,
                                        external_data=False, verbose=False, report=False)
            program.save(str(path), external_data=False)
            return _without_node_metadata(path.read_bytes()), how
        except Exception as exc:  # torch.export/onnxscript raise many types; every one is a reason to fall back
            dynamo_error = _first_line(exc)
            dynamo_ops = _operators(str(exc))
        how = {"exporter": "torchscript", "opset": opset,
               "fallback": {"from": "dynamo", "reason": dynamo_error, "operators": dynamo_ops}}
        try:
            torch.onnx.export(graph, example, str(path), dynamo=False, input_names=names, output_names=outputs,
                              opset_version=opset, dynamic_axes={n: dict(d) for n, d in dynamic.items()},
                              do_constant_folding=True)
            return path.read_bytes(), how
        except Exception as exc:
            ops = sorted(set(dynamo_ops) | set(_operators(str(exc))))
            named = f" (operator(s): {', '.join(ops)})" if ops else ""
            raise ExportError(f"this model cannot be exported to ONNX{named}: the dynamo exporter failed "
                              f"({dynamo_error}) and so did the TorchScript exporter it fell back to "
                              f"({_first_line(exc)})",
                              hint="keep serving it with --runtime torch; an encoder without that operator exports"
                              ) from None


def transformer_encoders(model: torch.nn.Module) -> list:
    """The modules that say how onnxruntime's transformer optimizer fuses them (`onnx_transformer()`)."""
    return [m for m in model.modules() if callable(getattr(m, "onnx_transformer", None))]


def fusion_options(options_class, model_type: str):
    """onnxruntime's transformer fusions for `model_type`, less SkipLayerNormalization (module docstring: on this
    CPU its kernel is ~4.5x slower than the Add + LayerNormalization it replaces)."""
    options = options_class(model_type)
    options.enable_skip_layer_norm = False
    return options


def to_fused_transformer(graph: ExportGraph, example: tuple, *, dynamic: dict[str, dict[int, str]], opset: int,
                         folder: Path, encoders: list) -> tuple[bytes, dict]:
    """(ONNX bytes, how): TorchScript export with eager attention, then onnxruntime's transformer fusions; raises
    ExportError unless every attention layer fused (a partial fusion is no faster than the plain graph)."""
    try:
        from onnxruntime.transformers.fusion_options import FusionOptions
        from onnxruntime.transformers.optimizer import optimize_model
    except ImportError as exc:
        raise ExportError(f"onnxruntime.transformers is missing ({exc.__class__.__name__})") from None
    specs = [e.onnx_transformer() for e in encoders]
    if len({s["model_type"] for s in specs}) != 1 or len({(s["num_heads"], s["hidden_size"]) for s in specs}) != 1:
        raise ExportError("the transformer encoders differ in type, heads or width: one optimizer pass cannot fuse "
                          "them all")
    spec = specs[0]
    path = folder / "graph-torchscript.onnx"
    with contextlib.ExitStack() as stack, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for encoder in encoders:
            stack.enter_context(encoder.eager_attention())
        try:
            torch.onnx.export(graph, example, str(path), dynamo=False, input_names=graph.input_names,
                              output_names=graph.output_names, opset_version=opset,
                              dynamic_axes={n: dict(d) for n, d in dynamic.items()}, do_constant_folding=True)
        except Exception as exc:
            raise ExportError(f"the TorchScript exporter failed ({_first_line(exc)})") from None
    try:
        started = time.perf_counter()
        with quiet_loggers("onnxruntime.transformers"):
            optimized = optimize_model(str(path), model_type=spec["model_type"], num_heads=spec["num_heads"],
                                       hidden_size=spec["hidden_size"], opt_level=0,
                                       optimization_options=fusion_options(FusionOptions, spec["model_type"]))
        fused = {k: v for k, v in optimized.get_fused_operator_statistics().items() if v}
    except Exception as exc:
        raise ExportError(f"onnxruntime's transformer optimizer failed ({_first_line(exc)})") from None
    layers = sum(s["layers"] for s in specs)
    if fused.get("Attention", 0) != layers:
        raise ExportError(f"onnxruntime's transformer optimizer fused {fused.get('Attention', 0)} of {layers} "
                          "attention layers")
    how = {"exporter": "torchscript", "opset": opset,
           "transformer_fusion": {"applied": True, "model_type": spec["model_type"], "num_heads": spec["num_heads"],
                                  "hidden_size": spec["hidden_size"], "fused": fused,
                                  "seconds": round(time.perf_counter() - started, 2),
                                  "why": "onnxruntime fuses the TorchScript export's attention (eager) into Attention "
                                         "ops (then the standard ONNX Attention behind int8-able Q/K/V MatMuls); "
                                         "the dynamo graph does not fuse"}}
    fused_path = folder / "graph-fused.onnx"
    optimized.save_model_to_file(str(fused_path))  # adds the com.microsoft opset import its fused ops need
    import onnx

    from dlforge.compress.onnx_export_attention import ONNX_ATTENTION_OPSET, onnx_attention

    model = onnx.load(str(fused_path))
    rewritten = onnx_attention(model)
    if rewritten:  # the standard Attention kernel is the faster one here (onnx_export_attention.py)
        how["opset"] = ONNX_ATTENTION_OPSET
        how["transformer_fusion"]["onnx_attention"] = rewritten
        return model.SerializeToString(), how
    return fused_path.read_bytes(), how


def compare(predictor, logits_ref: dict[str, torch.Tensor], logits: dict[str, torch.Tensor], y) -> dict:
    """Max abs diff of the logits, top-1 agreement (class outputs) and the main metric of both."""
    diff, agree, total = 0.0, 0, 0
    scale = 0.0
    for name, ref in logits_ref.items():
        got = logits[name]
        diff = max(diff, float((got - ref).abs().max())) if len(ref) else diff
        scale = max(scale, float(ref.abs().max())) if len(ref) else scale
        if predictor.labels(name) is not None and ref.ndim == 2 and ref.shape[1] > 1:
            agree += int((got.argmax(1) == ref.argmax(1)).sum())
            total += len(ref)
        elif predictor.labels(name) is not None:  # binary: one logit, the sign decides
            agree += int(((got.reshape(-1) > 0) == (ref.reshape(-1) > 0)).sum())
            total += len(ref)
    metric, before, direction = main_metric(predictor, score(predictor, logits_ref, y))
    _, after, _ = main_metric(predictor, score(predictor, logits, y))
    return {"rows": len(next(iter(logits_ref.values()))), "max_abs_diff": diff, "logit_scale": scale,
            "top1_agreement": agree / total if total else None, "metric": metric, "metric_torch": before,
            "metric_onnx": after, "metric_change": (after - before) * direction}


def parity_line(parity: dict) -> str:
    agreement = parity["top1_agreement"]
    return (f"parity on {parity['rows']} {parity['split']} rows: max abs diff {parity['max_abs_diff']:.2e}"
            + (f", top-1 agreement {agreement:.4f}" if agreement is not None else "")
            + f", {parity['metric']} torch {parity['metric_torch']:.4f} / onnx {parity['metric_onnx']:.4f}")


def _dynamic_axes(predictor, x: dict[str, torch.Tensor]) -> tuple[dict[str, dict[int, str]], dict[str, int]]:
    trim = {name: pad for name, pad in predictor.model.length_sensitive_inputs().items() if name in x
            and x[name].ndim == 2 and not x[name].is_floating_point()}
    dynamic = {name: ({0: "batch", 1: "length"} if name in trim else {0: "batch"}) for name in x}
    return dynamic, trim


def _parity_failures(parity: dict, tolerance: float) -> list[str]:
    failed = [f"max abs diff {parity['max_abs_diff']:.3g} > {tolerance:.3g}" if parity["max_abs_diff"] > tolerance else "",
              f"top-1 agreement {parity['top1_agreement']:.4f} < {MIN_AGREEMENT}"
              if parity["top1_agreement"] is not None and parity["top1_agreement"] < MIN_AGREEMENT else "",
              f"{parity['metric']} changed by {parity['metric_change']:+.4f}"
              if abs(parity["metric_change"]) > METRIC_TOLERANCE else ""]
    return [f for f in failed if f]


def export_onnx(run_dir: str | Path, *, opset: int = DEFAULT_OPSET, rows: int = PARITY_ROWS, overwrite: bool = False,
                threads: int | None = None, atol: float = ATOL, fuse_transformers: bool = True) -> dict:
    """Export `run_dir`'s model to model.onnx + export.json after checking parity; returns export.json's content.

    `fuse_transformers`: transformer encoders are exported for onnxruntime's fusions first (module docstring)."""
    run_dir = Path(run_dir)
    predictor = Predictor(run_dir, runtime="torch")
    if (run_dir / ONNX_FILE).exists() and not overwrite:
        raise ExportError(f"{ONNX_FILE} exists already", where=str(run_dir),
                          hint=f"pass --overwrite to export again: dlforge export {run_dir} --overwrite")
    split, table = evaluation_rows(predictor, rows)
    x_ref, y = encode_rows(predictor, table, scaled=True)
    scales = image_scales(predictor)
    x_raw, _ = encode_rows(predictor, table, scaled=False) if scales else (x_ref, y)
    names = list(predictor.signature["inputs"])
    outputs = predictor.output_names
    reason = unexportable(predictor.model)
    if reason:
        raise ExportError(f"this model cannot be exported to ONNX: {reason}", where=str(run_dir),
                          hint="fallback: keep running it on the torch runtime (--runtime torch, the default); the "
                               "cnn, embed, ngram and transformer encoders export")
    graph = ExportGraph(predictor.model, names, outputs, scales).eval()
    dynamic, trim = _dynamic_axes(predictor, x_ref)
    n_example = min(2, len(next(iter(x_raw.values()))))
    example = tuple(x_raw[name][:n_example].contiguous() for name in names)
    encoders = transformer_encoders(predictor.model) if fuse_transformers else []
    fusion_note = None
    if encoders:
        started = time.perf_counter()
        try:
            with tempfile.TemporaryDirectory(prefix=".export-", dir=run_dir) as folder, torch.no_grad():
                data, how = to_fused_transformer(graph, example, dynamic=dynamic, opset=opset, folder=Path(folder),
                                                 encoders=encoders)
            record, parity = _checked(predictor, run_dir, data, how, time.perf_counter() - started, x_raw, x_ref,
                                      y, names, outputs, dynamic, scales, trim, split, threads, opset)
            failed = _parity_failures(parity, atol * max(1.0, parity["logit_scale"]))
            if not failed:
                return _write(run_dir, data, record, parity, atol)
            fusion_note = f"the fused graph failed parity ({'; '.join(failed)})"
        except ExportError as exc:
            fusion_note = exc.message
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=".export-", dir=run_dir) as folder, torch.no_grad():
        data, how = to_onnx(graph, example, dynamic=dynamic, opset=opset, folder=Path(folder))
    if fusion_note:
        how["transformer_fusion"] = {"applied": False, "reason": fusion_note,
                                     "fallback": f"the {how['exporter']} export, unfused"}
    record, parity = _checked(predictor, run_dir, data, how, time.perf_counter() - started, x_raw, x_ref, y, names,
                              outputs, dynamic, scales, trim, split, threads, opset)
    return _write(run_dir, data, record, parity, atol)


def _checked(predictor, run_dir, data, how, seconds, x_raw, x_ref, y, names, outputs, dynamic, scales, trim, split,
             threads, opset) -> tuple[dict, dict]:
    """export.json's content for `data`, with the parity of the graph against the torch model on the rows given."""
    record = {
        "format": "onnx", "file": ONNX_FILE, "opset": how.get("opset", opset), **{k: v for k, v in how.items() if k != "opset"},
        "torch_version": torch.__version__,
        "inputs": [{"name": n, "dtype": str(x_raw[n].numpy().dtype), "shape": ["batch", *list(x_raw[n].shape[1:])],
                    "dynamic_axes": {str(a): label for a, label in dynamic[n].items()}} for n in names],
        "outputs": outputs,
        "scaled_in_graph": sorted(scales),
        "trim_padding": trim,
        "onnx": {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()},
        "export_seconds": round(seconds, 2),
    }
    runtime = OnnxRuntime(run_dir, batch_size=predictor.batch_size, threads=threads, record=record, data=data)
    with torch.no_grad():
        reference = predictor.runtime.run(x_ref)
    parity = {"split": split, **compare(predictor, reference, runtime.run(x_raw), y)}
    record["parity"] = parity
    record["session"] = runtime.settings
    return record, parity


def _write(run_dir: Path, data: bytes, record: dict, parity: dict, atol: float) -> dict:
    """model.onnx + export.json, or ExportError with the numbers when parity failed (nothing written)."""
    tolerance = atol * max(1.0, parity["logit_scale"])
    failed = _parity_failures(parity, tolerance)
    opset = record["opset"]
    parity["tolerances"] = {"max_abs_diff": tolerance, "top1_agreement": MIN_AGREEMENT, "metric": METRIC_TOLERANCE}
    parity["passed"] = not failed
    if failed:
        raise ExportError(f"the ONNX export does not match the torch model ({'; '.join(failed)}); "
                          f"{parity_line(parity)}; nothing was written", where=str(run_dir),
                          hint=f"exporter {record['exporter']}, opset {opset}: report this model; serve it with "
                               "--runtime torch meanwhile")
    write_bytes(run_dir / ONNX_FILE, data)
    write_json(run_dir / EXPORT_JSON, record)
    return record


def describe(record: dict) -> list[str]:
    """What `dlforge export` prints."""
    lines = [f"exported {record['file']} ({record['onnx']['bytes'] / 1e6:.2f} MB) with the {record['exporter']} "
             f"exporter, opset {record['opset']}, dynamic batch axis"]
    fallback = record.get("fallback")
    if fallback:
        ops = f" (operator(s) {', '.join(fallback['operators'])})" if fallback.get("operators") else ""
        lines.append(f"fallback: the dynamo exporter failed{ops}: {fallback['reason']}; used the TorchScript exporter")
    fusion = record.get("transformer_fusion")
    if fusion and fusion.get("applied"):
        ops = ", ".join(f"{n} {op}" for op, n in fusion["fused"].items())
        lines.append(f"onnxruntime transformer fusions ({fusion['model_type']}, {fusion['num_heads']} heads, width "
                     f"{fusion['hidden_size']}): {ops}")
        if fusion.get("onnx_attention"):
            lines.append(f"{fusion['onnx_attention']} Attention op(s) as Q/K/V MatMuls + ONNX Attention (opset "
                         f"{record['opset']}): the faster CPU kernel")
    elif fusion:
        lines.append(f"transformer fusions not applied: {fusion['reason']}; {fusion['fallback']}")
    if record.get("scaled_in_graph"):
        lines.append(f"preprocessing in the graph: pixel scaling of {', '.join(record['scaled_in_graph'])} "
                     "(the graph takes pixels 0..255)")
    if record.get("trim_padding"):
        lines.append(f"dynamic length axis: {', '.join(record['trim_padding'])} (padding cut per batch)")
    lines.append(parity_line(record["parity"]))
    s = record["session"]
    lines.append(f"onnxruntime {s['onnxruntime']}: {s['intra_op_threads']} intra-op thread(s), "
                 f"{s['inter_op_threads']} inter-op, {s['graph_optimization']}, CPU arena on")
    return lines


__all__ = ["ATOL", "DEFAULT_OPSET", "ExportError", "ExportGraph", "compare", "describe", "export_onnx", "image_scales",
           "parity_line", "to_onnx"]
