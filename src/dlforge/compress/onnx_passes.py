"""The ONNX compression passes: `onnx` (fp32 export with parity), `int8_dynamic` and `int8_static`.

Each takes a Candidate and returns one new Candidate, a complete run directory under `work_dir` that runs on
onnx. An int8 pass on a torch candidate exports it first (in its own copy), so `prune -> int8_static` chains.
Options: `threads`; for the int8 passes also `calibration`, `calibration_rows`, `max_drop` (quantize_run's).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from dlforge.artifact.format import MODEL_JSON, RUN_JSON, WEIGHTS
from dlforge.artifact.onnx_runtime import EXPORT_JSON, ONNX_FILE
from dlforge.compress.passes import Candidate, describe_pass, passes


def _copy_run(source: Path, folder: Path) -> Path:
    """A new complete run directory with the source's model, weights and run.json (and its export, if any)."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for name in (MODEL_JSON, WEIGHTS, RUN_JSON, ONNX_FILE, EXPORT_JSON):
        if (source / name).is_file():
            shutil.copyfile(source / name, folder / name)
    return folder


def _has_conv(run_dir: Path) -> bool:
    import onnx

    from dlforge.artifact.onnx_runtime import read_export_json, read_onnx_bytes

    graph = onnx.load_from_string(read_onnx_bytes(run_dir, read_export_json(run_dir))).graph
    return any(node.op_type in ("Conv", "ConvTranspose") for node in graph.node)


@passes.register("onnx")
def onnx_pass(source: Candidate, *, work_dir: Path, threads: int | None = None, **options) -> list[Candidate]:
    """fp32 ONNX of a torch candidate (parity checked, refused on mismatch); an onnx candidate is returned as is."""
    from dlforge.compress.onnx_export import export_onnx

    if source.runtime == "onnx":
        return [source]
    folder = _copy_run(Path(source.run_dir), Path(work_dir) / f"{source.name}+onnx")
    record = export_onnx(folder, threads=threads, overwrite=True)
    return [Candidate(f"{source.name}+onnx" if source.name != "fp32" else "onnx_fp32", folder, "onnx",
                      {**source.notes, "export": {k: record[k] for k in ("exporter", "opset", "parity")}})]


def _int8(mode: str, source: Candidate, work_dir: Path, options: dict) -> list[Candidate]:
    from dlforge.compress.quantize import quantize_run

    work_dir = Path(work_dir)
    if source.runtime != "onnx":  # export first, in a copy of its own
        source = onnx_pass(source, work_dir=work_dir, threads=options.get("threads"))[0]
    if mode == "static" and not _has_conv(Path(source.run_dir)):
        from dlforge.compress.quantize import QuantizeError

        raise QuantizeError("static int8 is for conv nets and this graph has no convolution: its MatMuls take dynamic "
                            "int8 (int8_dynamic), which quantizes activations per batch instead of fixing their "
                            "ranges on calibration rows", where=str(Path(source.run_dir) / "model.onnx"))
    name = f"{source.name}+int8_{mode}" if source.name not in ("fp32", "onnx_fp32") else f"int8_{mode}"
    out = work_dir / name
    if out.exists():
        shutil.rmtree(out)
    allowed = {k: options[k] for k in ("calibration", "calibration_rows", "max_drop", "threads", "parity_rows",
                                       "qat_epochs", "qat_lr", "bias_correction", "reduce_range", "input_layer")
               if k in options}
    record = quantize_run(source.run_dir, mode=mode, out_dir=out, **allowed)
    q = record["quantization"]
    notes = {**source.notes, "quantization": {k: q[k] for k in ("mode", "calibration", "int8_layers", "fp32_layers",
                                                                 "fallback", "unsupported", "input_layer", "size_ratio")}}
    return [Candidate(name, out, "onnx", notes)]


@passes.register("int8_dynamic")
def int8_dynamic_pass(source: Candidate, *, work_dir: Path, **options) -> list[Candidate]:
    """Dynamic int8 (MatMul/LSTM/Attention/embeddings; convs stay fp32) of a candidate."""
    return _int8("dynamic", source, work_dir, options)


@passes.register("int8_static")
def int8_static_pass(source: Candidate, *, work_dir: Path, **options) -> list[Candidate]:
    """Static int8 QDQ, calibrated on training rows, of a conv net (as `dlforge quantize --mode auto` chooses it:
    a graph without convolutions is refused with the reason, and the search records it and goes on)."""
    return _int8("static", source, work_dir, options)


@passes.register("int8_qat")
def int8_qat_pass(source: Candidate, *, work_dir: Path, **options) -> list[Candidate]:
    """int8 QDQ after quantization-aware fine-tuning (torchao PT2E; the `qat` extra): the search tries it only when
    post-training int8 lost more than the accuracy budget. Without torchao it is skipped with that reason."""
    return _int8("qat", source, work_dir, options)


describe_pass(onnx_pass, accepts=("torch",))  # an onnx candidate is exported already
for _fn in (int8_dynamic_pass, int8_static_pass):
    describe_pass(_fn, accepts=("onnx",), group="int8")
describe_pass(int8_qat_pass, accepts=("onnx",), group="int8", last_resort=True)


__all__ = ["int8_dynamic_pass", "int8_qat_pass", "int8_static_pass", "onnx_pass"]
