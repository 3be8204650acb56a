"""`dlforge export` and `dlforge quantize`: ONNX with parity, int8 through onnxruntime."""

import typer

commands = typer.Typer()
