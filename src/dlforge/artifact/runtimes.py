"""The runtime seam: what runs a loaded model's forward pass, behind one interface.

`Predictor`, `evaluate`, `dlforge predict` and the server all call `runtime.run(x)`: encoded inputs
in (tensors by input name, any number of rows), logits out (tensors by output name, float32, on
the CPU), in chunks of the recipe's eval batch size so that memory stays bounded on large tables.
Encoding before and decoding after (labels, probabilities, metrics) stay in the Predictor, so a
runtime is only the forward pass.

`torch` (eager, the trained module) is the one runtime today. onnxruntime lands as a second file
that registers itself (`@runtimes.register("onnxruntime")`) and reads its exported variant from the
run directory; `Predictor(run_dir, runtime="onnxruntime")` then selects it, and no caller changes.
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
# torch runs `model` (weights already loaded); an exported runtime would read its file in `run_dir`.
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
def torch_runtime(*, model: torch.nn.Module, run_dir: Path, batch_size: int) -> Runtime:
    return TorchRuntime(model, batch_size=batch_size)


def build_runtime(name: str, *, model: torch.nn.Module, run_dir: Path, batch_size: int) -> Runtime:
    """The runtime `name` for a loaded run (an unknown name lists the known ones)."""
    return runtimes.get(name)(model=model, run_dir=Path(run_dir), batch_size=batch_size)


__all__ = ["Runtime", "TorchRuntime", "build_runtime", "runtimes"]
