"""`dlforge export` and `dlforge quantize`: ONNX with parity, int8 through onnxruntime."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from dlforge.core.errors import DlforgeError

commands = typer.Typer()


@commands.command()
def export(
    run: Path = typer.Argument(..., help="A run directory."),
    format: str = typer.Option("onnx", "--format", help="Export format (onnx)."),
    opset: int = typer.Option(20, "--opset", help="ONNX opset (13..23)."),
    rows: int = typer.Option(1000, "--rows", help="Test rows the parity check runs on."),
    threads: Optional[int] = typer.Option(None, "--threads", help="onnxruntime intra-op threads (default: torch's)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing model.onnx."),
    fuse: bool = typer.Option(True, "--fuse/--no-fuse", help="Transformer encoders (MiniLM): export for onnxruntime's "
                              "fused Attention/LayerNorm/GELU ops (faster; int8 QKV projections); --no-fuse: the plain "
                              "dynamo graph."),
):
    """Export a run to ONNX (model.onnx + export.json beside model.json), refused unless it matches the torch model."""
    if format != "onnx":
        raise DlforgeError(f"unknown export format '{format}'; known: onnx", where="--format")
    if not 13 <= opset <= 23:
        raise DlforgeError(f"opset {opset} is outside 13..23 (int8 QDQ needs 13; onnxruntime 1.32 runs up to 23)",
                           where="--opset")
    if rows < 1:
        raise DlforgeError("--rows must be at least 1", where="--rows")
    from dlforge.compress.onnx_export import describe, export_onnx

    record = export_onnx(run, opset=opset, rows=rows, overwrite=overwrite, threads=threads, fuse_transformers=fuse)
    for line in describe(record):
        typer.echo(line)
    typer.echo(f"wrote {run / 'model.onnx'} and {run / 'export.json'}; run it with --runtime onnx")


@commands.command()
def quantize(
    run: Path = typer.Argument(..., help="A run directory (exported to ONNX first if it has no model.onnx)."),
    mode: str = typer.Option("auto", "--mode", help="static (QDQ, calibrated: conv nets) | dynamic (Linear/LSTM/"
                             "transformer) | qat (quantization-aware fine-tuning, torchao PT2E, to QDQ) | auto "
                             "(static when the graph has convolutions)."),
    calibration: str = typer.Option("minmax", "--calibration", help="Static: minmax | entropy | percentile."),
    calibration_rows: int = typer.Option(256, "--calibration-rows", help="Static: training rows to calibrate on."),
    bias_correction: Optional[bool] = typer.Option(None, "--bias-correction/--no-bias-correction", help="Static "
                                                   "(on by default there): take the mean output shift of each layer's "
                                                   "int8 weights, measured on the calibration rows, off its bias "
                                                   "(Nagel et al. 2019)."),
    reduce_range: Optional[bool] = typer.Option(None, "--reduce-range/--no-reduce-range", help="Static: weights in a "
                                                "7-bit range, which x86 int8 kernels without VNNI cannot saturate "
                                                "(default: on exactly when this CPU has no VNNI)."),
    input_layer: str = typer.Option("auto", "--input-layer", help="Static: the first convolution (the one reading "
                                    "the image) int8 | fp32 | auto (fp32 when that is measured at least 5% faster "
                                    "at batch 1 on this CPU and within --max-drop)."),
    max_drop: float = typer.Option(0.005, "--max-drop", help="Metric loss allowed before layers fall back to fp32 "
                                   "(0.005 = half a point of accuracy)."),
    qat_epochs: int = typer.Option(1, "--qat-epochs", help="QAT: fine-tuning epochs on the training rows."),
    qat_lr: Optional[float] = typer.Option(None, "--qat-lr", help="QAT: learning rate (default: the recipe's / 10)."),
    name: Optional[str] = typer.Option(None, "--name", help="Variant name (default int8_<mode>)."),
    threads: Optional[int] = typer.Option(None, "--threads", help="onnxruntime intra-op threads (default: torch's)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing variant of that name."),
):
    """int8 quantization through onnxruntime: writes RUN/variants/<name>/, a complete run directory."""
    from dlforge.compress.quantize import describe, quantize_run

    if qat_epochs < 1:
        raise DlforgeError("--qat-epochs must be at least 1", where="--qat-epochs")

    record = quantize_run(run, mode=mode, calibration=calibration, calibration_rows=calibration_rows,
                          max_drop=max_drop, name=name, overwrite=overwrite, threads=threads, qat_epochs=qat_epochs,
                          qat_lr=qat_lr, bias_correction=bias_correction,
                          reduce_range=reduce_range, input_layer=input_layer)
    if record.get("exported_now"):
        typer.echo(f"exported {run / 'model.onnx'} first (parity checked; export.json)")
    for line in describe(record):
        typer.echo(line)
    typer.echo(f"variant: {record['variant_dir']} (evaluate, predict, serve and dlforge.load take it)")
