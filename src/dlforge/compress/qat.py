"""Quantization-aware training (`dlforge quantize RUN --mode qat`): torchao's PT2E flow, exported to ONNX QDQ.

Why torchao: torch.ao.quantization (eager/FX QAT) is deprecated on this torch and torch 2.13 no longer ships
`torch.ao.quantization.quantize_pt2e`; torchao (the `qat` extra) holds the PT2E API now. Its QAT config for
X86InductorQuantizer is the scheme of `--mode static` (int8 per-channel symmetric weights, uint8 asymmetric
activations), and the converted graph exports through the dynamo exporter as QuantizeLinear/DequantizeLinear,
so a QAT variant runs on the same onnx runtime as a post-training one. quantize.py calls `qat_onnx` and does
the rest (parity, variant) as for the other modes.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from dlforge.artifact.predictor import Predictor
from dlforge.compress.rows import encode_rows, run_splits, sample, take
from dlforge.compress.quantize import QuantizeError


def torchao_pt2e():
    """torchao's PT2E QAT API (torch.ao.quantization is deprecated on this torch; PT2E lives in torchao now)."""
    try:
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_qat_pt2e
        from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
            X86InductorQuantizer, get_default_x86_inductor_quantization_config)
    except ImportError:
        raise QuantizeError("quantization-aware training needs torchao (PT2E QAT)",
                            hint="pip install 'dlforge[qat]' (torchao), or use --mode static") from None
    quantizer = X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config(is_qat=True))
    return prepare_qat_pt2e, convert_pt2e, quantizer


def qat_onnx(run_dir: Path, *, epochs: int, lr: float | None, folder: Path, opset: int, rows: int | None = None) -> tuple[bytes, dict]:
    """Quantization-aware fine-tuning with torchao's PT2E flow, exported to ONNX QDQ.

    The graph dlforge exports (image scaling inside) is captured with torch.export, `prepare_qat_pt2e` inserts
    fake quantization (X86InductorQuantizer's QAT config: int8 per-channel symmetric weights, uint8 activations,
    the same scheme as --mode static), it trains `epochs` epochs on the training rows with the model's own loss
    (lr: a tenth of the recipe's unless given), `convert_pt2e` folds it into quantize/dequantize ops, and the
    dynamo exporter writes them as QuantizeLinear/DequantizeLinear, which onnxruntime fuses into int8 kernels."""
    from dlforge.compress.onnx_export import ExportGraph, image_scales, to_onnx

    prepare_qat_pt2e, convert_pt2e, quantizer = torchao_pt2e()
    predictor = Predictor(run_dir, runtime="torch")
    table, splits = run_splits(predictor)
    train = splits["train"] if rows is None else sample(splits["train"], rows, seed=3)
    scales = image_scales(predictor)
    x, y = encode_rows(predictor, take(predictor, table, train), scaled=not scales)
    names, outputs = list(predictor.signature["inputs"]), predictor.output_names
    graph = ExportGraph(predictor.model, names, outputs, scales).eval()
    example = tuple(x[n][:2].contiguous() for n in names)
    dynamic = (tuple({0: torch.export.Dim.DYNAMIC} for _ in names),)
    try:
        captured = torch.export.export(graph, example, dynamic_shapes=dynamic).module()
        prepared = prepare_qat_pt2e(captured, quantizer)
    except Exception as exc:
        raise QuantizeError(f"torch.export/PT2E could not prepare this model for QAT ({exc.__class__.__name__}: "
                            f"{str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ''})",
                            where=str(run_dir), hint="use --mode static or dynamic") from None
    recipe = predictor.recipe.training
    base_lr = recipe.optimizer.lr if isinstance(recipe.optimizer.lr, float) else 1e-3
    optimizer = torch.optim.Adam(prepared.parameters(), lr=lr or base_lr * 0.1)
    generator = torch.Generator().manual_seed(0)
    n = len(next(iter(y.values())))
    started, steps = time.perf_counter(), 0
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator)
        for i in range(0, n, recipe.batch_size):
            index = order[i:i + recipe.batch_size]
            logits = dict(zip(outputs, prepared(*(x[name][index] for name in names))))
            loss = predictor.model.loss(logits, {k: v[index] for k, v in y.items()})
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            steps += 1
    train_seconds = time.perf_counter() - started
    try:
        from torchao.quantization.pt2e import move_exported_model_to_eval

        move_exported_model_to_eval(prepared)
    except ImportError:
        pass
    converted = convert_pt2e(prepared)

    class Converted(torch.nn.Module):  # to_onnx reads input/output names from the module
        def __init__(self):
            super().__init__()
            self.inner, self.input_names, self.output_names = converted, names, outputs

        def forward(self, *inputs):
            return tuple(self.inner(*inputs))

    with torch.no_grad():
        data, how = to_onnx(Converted(), example, dynamic={n: {0: "batch"} for n in names}, opset=opset, folder=folder)
    return data, {"epochs": epochs, "steps": steps, "rows": n, "lr": optimizer.param_groups[0]["lr"],
                  "train_seconds": round(train_seconds, 1), "api": "torchao PT2E prepare_qat_pt2e/convert_pt2e, "
                  "X86InductorQuantizer (is_qat)", "exporter": how["exporter"]}


__all__ = ["qat_onnx", "torchao_pt2e"]
