"""The runtime seam: what runs a loaded model's forward pass, behind one interface.

`Predictor`, `evaluate`, `dlforge predict` and the server all call `runtime.run(x)`: encoded inputs
in (tensors by input name, any number of rows), logits out (tensors by output name, float32, on
the CPU), in chunks of the recipe's eval batch size so that memory stays bounded on large tables.
Encoding before and decoding after (labels, probabilities, metrics) stay in the Predictor, so a
runtime is only the forward pass.

Two runtimes: `torch` (the trained module's lean graph, artifact/lean.py, or the module itself) and `onnx` (artifact/onnx_runtime.py: the run's
model.onnx from `dlforge export` on onnxruntime, imported only when chosen). `default_runtime(run_dir)`
picks for callers that were given none: a variant whose model only exists as ONNX (an int8 one, say)
runs on onnx; the server also prefers onnx whenever model.onnx exists (`prefer_onnx=True`).
"""

from __future__ import annotations

import os
import threading
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
LEAN_ENV = "DLFORGE_TORCH_LEAN"  # "0" runs the torch runtime's module as it is (no lean graph)


class TorchRuntime:
    """PyTorch on the CPU: the trained module in eval mode, under `inference_mode`.

    By default the forward pass runs the module's lean graph (artifact/lean.py): the same torch kernels as the
    module, without the Python cost of its module calls (the half of a small CNN's batch-1 call, pruning cannot
    remove). It is traced from the first batch the runtime gets and checked against the module on its first rows;
    a model that does not trace (a branch on the data: the text encoders' trimming), fails the check, or gets
    inputs of another rank or dtype runs as the module. `settings` says which path ran and why.
    `lean=False` (or DLFORGE_TORCH_LEAN=0 in the environment) always runs the module.
    """

    name = "torch"

    def __init__(self, model: torch.nn.Module, *, batch_size: int, lean: bool | None = None):
        self.model = model.eval()
        self.batch_size = batch_size
        if lean is None:
            lean = os.environ.get(LEAN_ENV, "1").strip().lower() not in ("0", "false", "off", "no")
        self.lean = lean
        self._graph = None  # LeanForward once built
        self._path = "module"
        self._reason = "pending: traced at the first forward pass" if lean else \
            f"lean path turned off ({'lean=False' if os.environ.get(LEAN_ENV) is None else LEAN_ENV + '=0'})"
        self._lock = threading.Lock()

    @property
    def settings(self) -> dict:
        """Which forward path ran ("lean": the traced graph, "module": the nn.Module) and why, for the server's
        /v1/model and the CLI's runtime line."""
        described = {"path": self._path, "torch_threads": torch.get_num_threads()}
        if self._graph is not None:
            described["lean"] = dict(self._graph.description)
        if self._reason:
            described["reason"] = self._reason
        return described

    def _forward_for(self, x: dict[str, torch.Tensor]):
        if not self.lean:
            return self.model
        graph = self._graph
        if graph is None or graph.stale():
            with self._lock:  # one build, also when two threads run the first batches at once
                if self.lean and (self._graph is None or self._graph.stale()):
                    self._build(x)
            graph = self._graph
        if graph is None:
            return self.model
        if graph.accepts(x):
            return graph.forward
        self._reason = "some inputs had another rank or dtype than traced: those batches ran as the module"
        return self.model

    def _build(self, x: dict[str, torch.Tensor]) -> None:
        from dlforge.artifact.lean import LeanTraceError, lean_forward

        rebuilt = self._graph is not None
        self._graph = None
        try:
            self._graph = lean_forward(self.model, x)
        except LeanTraceError as exc:
            self.lean, self._path, self._reason = False, "module", f"no lean graph: {exc}"
            return
        self._path = "lean"
        self._reason = "traced again: the model's weights or layers were replaced" if rebuilt else None

    def run(self, x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        n = len(next(iter(x.values())))
        with torch.inference_mode():
            forward = self._forward_for(x)
            if n <= self.batch_size:
                return {name: value.float() for name, value in forward(x).items()}
            chunks: dict[str, list] = {}
            for rows in eval_batches(n, self.batch_size):
                for name, value in forward({k: v[rows] for k, v in x.items()}).items():
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


__all__ = ["LEAN_ENV", "Runtime", "TorchRuntime", "build_runtime", "default_runtime", "runtimes"]
