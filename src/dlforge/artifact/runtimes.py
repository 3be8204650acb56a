"""The runtime seam: what runs a loaded model's forward pass, behind one interface.

`Predictor`, `evaluate`, `dlforge predict` and the server all call `runtime.run(x)`: encoded inputs
in (tensors by input name, any number of rows), logits out (tensors by output name, float32, on
the CPU), in chunks of the recipe's eval batch size so that memory stays bounded on large tables.
Encoding before and decoding after (labels, probabilities, metrics) stay in the Predictor, so a
runtime is only the forward pass.

Two runtimes: `torch` (eager, the trained module) and `onnx` (artifact/onnx_runtime.py: the run's
model.onnx from `dlforge export` on onnxruntime, imported only when chosen). `default_runtime(run_dir)`
picks for callers that were given none: a variant whose model only exists as ONNX (an int8 one, say)
runs on onnx; the server also prefers onnx whenever model.onnx exists (`prefer_onnx=True`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Protocol, runtime_checkable

import torch

from dlforge.core.registry import Registry
from dlforge.data.batches import eval_batches


@runtime_checkable
class Runtime(Protocol):
    """Runs a model: `run` maps encoded inputs (n rows) to float32 logits (n rows) per output."""

    name: str

    def run(self, x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]: ...


# A factory builds a runtime for one loaded run. Keyword-only, so a runtime takes what it needs:
# torch runs `model` (weights already loaded); onnx reads model.onnx in `run_dir`.
RuntimeFactory = Callable[..., Runtime]
runtimes: Registry[RuntimeFactory] = Registry("runtime")


class TorchRuntime:
    """Eager PyTorch on the CPU: the trained module in eval mode, under `no_grad`."""

    name = "torch"

    def __init__(self, model: torch.nn.Module, *, batch_size: int):
        self.model = model.eval()
        self.batch_size = batch_size

    @torch.no_grad()
    def run(self, x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        n = len(next(iter(x.values())))
        chunks: dict[str, list] = {}
        for rows in eval_batches(n, self.batch_size):
            for name, value in self.model({k: v[rows] for k, v in x.items()}).items():
                chunks.setdefault(name, []).append(value.float())
        return {name: torch.cat(parts) for name, parts in chunks.items()}


@runtimes.register("torch")
def torch_runtime(*, model: torch.nn.Module, run_dir: Path, batch_size: int, threads: int | None = None) -> Runtime:
    return TorchRuntime(model, batch_size=batch_size)  # torch's threads are the process's (the server sets them)


@runtimes.register("onnx")
def onnx_runtime(*, model: torch.nn.Module, run_dir: Path, batch_size: int, threads: int | None = None) -> Runtime:
    from dlforge.artifact.onnx_runtime import OnnxRuntime  # onnxruntime is imported only when this runtime is chosen

    return OnnxRuntime(run_dir, batch_size=batch_size, threads=threads)


def default_runtime(run_dir: Path, *, prefer_onnx: bool = False) -> str:
    """The runtime for a caller that named none: "onnx" for a variant that only exists as ONNX (its
    variant.json says so), or whenever model.onnx exists and `prefer_onnx`; else "torch"."""
    import json

    run_dir = Path(run_dir)
    if not (run_dir / "model.onnx").is_file():
        return "torch"
    if prefer_onnx:
        return "onnx"
    try:
        variant = json.loads((run_dir / "variant.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "torch"
    return "onnx" if isinstance(variant, dict) and variant.get("runtime") == "onnx" else "torch"


def build_runtime(name: str, *, model: torch.nn.Module, run_dir: Path, batch_size: int,
                  threads: int | None = None) -> Runtime:
    """The runtime `name` for a loaded run (an unknown name lists the known ones). `threads` (when given) is the
    runtime's own thread count (onnxruntime's intra-op threads); factories that take none need not accept it."""
    options = {"threads": threads} if threads else {}
    return runtimes.get(name)(model=model, run_dir=Path(run_dir), batch_size=batch_size, **options)


__all__ = ["Runtime", "TorchRuntime", "build_runtime", "default_runtime", "runtimes"]
