"""The compression passes `dlforge compress` searches over, behind one registry.

A pass takes a candidate (a complete run directory and the runtime that runs it) and returns the
candidates it derives from it, each a complete run directory under `work_dir`: `onnx` exports fp32,
`int8_dynamic`/`int8_static` quantize an ONNX candidate, `prune` shrinks a torch candidate, `distill`
trains a student. Chaining passes gives the combinations (prune -> onnx -> int8_static). The search
(`compress/search.py`) decides which passes to run on which candidates; a pass only transforms.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from dlforge.core.registry import Registry


@dataclass(frozen=True)
class Candidate:
    """One model to measure: a complete run directory and the runtime that runs it ("torch" | "onnx")."""

    name: str  # e.g. "fp32", "int8_static", "pruned_0.50", "pruned_0.50+int8_static"
    run_dir: Path
    runtime: str
    notes: dict = field(default_factory=dict)  # what the pass did (calibration, fallback layers, ratios, ...)


# pass(source: Candidate, *, work_dir: Path, **options) -> list[Candidate]
CompressionPass = Callable[..., list[Candidate]]


def describe_pass(fn: CompressionPass, *, accepts: tuple[str, ...] | None = None, group: str | None = None,
                  last_resort: bool = False) -> CompressionPass:
    """What the search needs to know to chain a pass sensibly (a pass without these is chained everywhere once):
    - `accepts`: the runtimes of the candidates it is worth applying to (int8 takes an ONNX graph: the search
      quantizes the `onnx` candidate rather than exporting the torch one a second time);
    - `group`: passes of one group are alternatives, at most one per chain (int8 static and dynamic: an int8 graph
      is not quantized again);
    - `last_resort`: tried on a candidate only when every other pass of its group left it over the accuracy budget
      (quantization-aware training after post-training quantization lost too much)."""
    fn.accepts, fn.group, fn.last_resort = accepts, group, last_resort
    return fn

# The modules whose passes register themselves on import; loaded on the registry's first lookup (importing them
# here at the top would make a cycle: they import this module for `passes`).
BUILTIN_PASS_MODULES = (
    "dlforge.compress.onnx_passes",  # onnx, int8_dynamic, int8_static, int8_qat
    "dlforge.compress.prune",  # prune
    "dlforge.compress.distill",  # distill
)


class PassRegistry(Registry):
    """The Registry, loading the built-in pass modules before the first lookup."""

    _loaded = False

    def _load(self) -> None:
        if not self._loaded:
            import importlib

            self._loaded = True
            for module in BUILTIN_PASS_MODULES:
                importlib.import_module(module)

    def get(self, name: str):
        self._load()
        return super().get(name)

    def names(self, pattern: str = "*") -> list[str]:
        self._load()
        return super().names(pattern)

    def __contains__(self, name: str) -> bool:
        self._load()
        return super().__contains__(name)

    def items(self):
        self._load()
        return super().items()


passes: PassRegistry = PassRegistry("compression pass")

__all__ = ["Candidate", "CompressionPass", "describe_pass", "passes"]
