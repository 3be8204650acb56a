"""Pruning that really shrinks a model (structured channels) and pruning that only zeroes (unstructured).

Structured: Torch-Pruning's dependency graph (Fang et al., CVPR 2023) finds the groups of coupled tensors (a
convolution's output channels, the batch-norm after it, the next layer's input channels, a flattened dense layer's
matching columns) and removes the lowest-L2 channels of each group, so convolutions and dense layers get smaller
and a dense kernel runs faster. The heads' last layers are never pruned on their outputs: the classifier keeps its
classes. `steps` > 1 prunes in equal steps to the target ratio with a fine-tune after each (an iterative schedule
recovers more accuracy than one cut of the same size); each fine-tune is the run's own recipe and data
(compress/variant.py). The shrunken widths go to model.json (models/resize.py), so the pruned run loads anywhere
without Torch-Pruning.

Unstructured: global L1 magnitude pruning over every conv/dense weight (torch.nn.utils.prune), the mask kept
through the fine-tune and then made permanent. The weights keep their shapes: zeros do not speed up dense kernels
and safetensors stores them as written, so latency and file size stay; the report says so and gives the gzip size,
which the zeros do shrink.
"""

from __future__ import annotations

import copy
import gzip
import json
import time
from pathlib import Path

import torch
from torch import nn

from dlforge.compress.passes import Candidate, passes
from dlforge.compress.variant import FINETUNE_LR_SCALE, RunData, finetune, variant_dir, write_variant
from dlforge.core.errors import DlforgeError
from dlforge.core.files import write_json
from dlforge.models import build_model, count_parameters
from dlforge.models.resize import RESIZED_KEY, layer_shapes, resized_record

PRUNABLE = (nn.Conv1d, nn.Conv2d, nn.Linear)
MAX_STEPS = 20


def _torch_pruning():
    try:
        import torch_pruning
    except ImportError:
        raise DlforgeError("structured pruning needs Torch-Pruning", hint="pip install 'dlforge[compress]'") from None
    return torch_pruning


def _example_inputs(data: RunData) -> dict[str, torch.Tensor]:
    """Two real training rows: the graph is traced on the inputs the model really sees."""
    x = data.prepared.splits["train"].x
    return {k: v[:2] for k, v in x.items()}


def check_ratio(value: float, *, option: str) -> float:
    if not 0.0 < value < 1.0:
        raise DlforgeError(f"{option} is the fraction of channels or weights to remove; got {value}", where=option,
                           hint=f"give a number between 0 and 1, e.g. {option} 0.5")
    return value


def _kept_layers(model: nn.Module) -> list[nn.Module]:
    """Layers whose outputs are never pruned: every head's layers (the classes stay), recurrent layers and
    embeddings (their weights are fused or looked up by id, and pruning them buys little on a CPU), attention, and
    every layer of a pretrained backbone (its attention heads and stored config assume their widths; what follows
    the backbone is pruned)."""
    from dlforge.models.encoders.base import Backbone

    kept = [m for m in model.heads.modules() if isinstance(m, PRUNABLE)]
    kept += [m for m in model.modules() if isinstance(m, (nn.LSTM, nn.GRU, nn.RNN, nn.Embedding,
                                                           nn.MultiheadAttention))]
    for encoder in model.encoders.values():
        if isinstance(encoder, Backbone):
            kept += [m for m in encoder.backbone.modules() if isinstance(m, (*PRUNABLE, nn.Embedding))]
    return kept


def _check_forward(model: nn.Module, example: dict[str, torch.Tensor], sizes: dict[str, tuple]) -> None:
    """The pruned model still runs and gives the same output sizes; else a clear error, never a broken variant."""
    try:
        with torch.no_grad():
            out = model.eval()(example)
        got = {k: tuple(v.shape[1:]) for k, v in out.items()}
    except Exception as exc:  # a layer whose code assumes its old width (a reshape, an attention head size)
        raise DlforgeError(f"structured pruning broke this model's forward pass ({exc.__class__.__name__}: "
                           f"{str(exc)[:200]})", hint="use --unstructured, or distill a smaller student") from None
    if got != sizes:
        raise DlforgeError(f"structured pruning changed the model's output sizes ({sizes} -> {got})",
                           hint="use --unstructured, or distill a smaller student")


def prune_structured(model: nn.Module, data: RunData, *, ratio: float, steps: int = 1, finetune_epochs: int = 1,
                     lr_scale: float = FINETUNE_LR_SCALE, progress: bool = False, say=lambda text: None) -> nn.Module:
    """Remove `ratio` of the channels of every prunable group in `steps` equal steps, fine-tuning after each."""
    tp = _torch_pruning()
    model = copy.deepcopy(model).cpu().eval()
    example = _example_inputs(data)
    with torch.no_grad():
        sizes = {k: tuple(v.shape[1:]) for k, v in model(example).items()}
    try:
        pruner = tp.pruner.MetaPruner(
            model, example, importance=tp.importance.MagnitudeImportance(p=2), pruning_ratio=ratio,
            iterative_steps=steps, ignored_layers=_kept_layers(model), forward_fn=lambda m, x: m(x),
            output_transform=lambda out: sum(v.float().sum() for v in out.values()))
    except Exception as exc:  # the dependency graph could not be traced (an operator Torch-Pruning does not know)
        raise DlforgeError(f"Torch-Pruning cannot trace this model ({exc.__class__.__name__}: {str(exc)[:200]})",
                           hint="use --unstructured, or distill a smaller student") from None
    for step in range(steps):
        pruner.step()
        _check_forward(model, example, sizes)
        say(f"  step {step + 1}/{steps}: {count_parameters(model):,} parameters; fine-tuning {finetune_epochs} epoch(s)")
        model = finetune(model, data, epochs=finetune_epochs, lr_scale=lr_scale, progress=progress)
        # The fine-tune returns the trained module (the same object unless a strategy wrapped it); keep pruning it.
        pruner.model = model
    return model


def prune_unstructured(model: nn.Module, data: RunData, *, amount: float, finetune_epochs: int = 1,
                       lr_scale: float = FINETUNE_LR_SCALE, progress: bool = False) -> nn.Module:
    """Zero the `amount` smallest-magnitude weights across all conv/dense layers (one global threshold), keep the mask
    through the fine-tune, then make it permanent."""
    from torch.nn.utils import prune

    model = copy.deepcopy(model).cpu().eval()
    targets = [(m, "weight") for m in model.modules() if isinstance(m, PRUNABLE)]
    prune.global_unstructured(targets, pruning_method=prune.L1Unstructured, amount=amount)
    model = finetune(model, data, epochs=finetune_epochs, lr_scale=lr_scale, progress=progress)
    for module, name in targets:
        prune.remove(module, name)
    return model


def sparsity(model: nn.Module) -> float:
    weights = [m.weight for m in model.modules() if isinstance(m, PRUNABLE)]
    total = sum(w.numel() for w in weights)
    return float(sum((w == 0).sum() for w in weights)) / max(total, 1)


class _Positional(nn.Module):
    """The model with its inputs as positional tensors (the op counter calls `model(*inputs)`), logits summed."""

    def __init__(self, model: nn.Module, names: list[str]):
        super().__init__()
        self.model, self.names = model, names

    def forward(self, *tensors):
        return sum(v.float().sum() for v in self.model(dict(zip(self.names, tensors))).values())


def macs(model: nn.Module, example: dict[str, torch.Tensor]) -> int | None:
    """Multiply-accumulates of one row's forward pass (Torch-Pruning's counter), None if it cannot count them."""
    try:
        tp = _torch_pruning()
        ops, _ = tp.utils.count_ops_and_params(_Positional(model.eval(), list(example)),
                                               tuple(v[:1] for v in example.values()))
        return int(ops)
    except Exception:  # a counter failure must not fail the pruning; the figure is then left out
        return None


def _latency_ms(model: nn.Module, example: dict[str, torch.Tensor], *, repeats: int = 200) -> float:
    """Median wall time of a batch-1 forward pass in eager torch (after a warm-up), in ms."""
    x = {k: v[:1] for k, v in example.items()}
    times = []
    with torch.no_grad():
        for _ in range(20):
            model(x)
        for _ in range(repeats):
            start = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - start)
    return 1000 * sorted(times)[len(times) // 2]


def prune_run(run_dir: str | Path, *, channels: float | None = None, unstructured: float | None = None,
              finetune_epochs: int = 1, steps: int = 1, lr_scale: float = FINETUNE_LR_SCALE, name: str | None = None,
              out: str | Path | None = None, progress: bool = False, say=lambda text: None,
              data: RunData | None = None, register: bool = True) -> dict:
    """Prune a trained run and write the result as a variant (`RUN/variants/<name>/`); returns what it did and measured.

    Exactly one of `channels` (structured: the fraction of channels to remove) and `unstructured` (the fraction of
    weights to zero) is given.
    """
    if (channels is None) == (unstructured is None):
        raise DlforgeError("give one of --channels (structured) or --unstructured (weights zeroed)",
                           hint="dlforge prune RUN --channels 0.5")
    if not 1 <= steps <= MAX_STEPS:
        raise DlforgeError(f"--steps must be 1..{MAX_STEPS}; got {steps}", where="--steps")
    if finetune_epochs < 0:
        raise DlforgeError(f"--finetune is a number of epochs (0 for none); got {finetune_epochs}", where="--finetune")
    mode = "structured" if channels is not None else "unstructured"
    ratio = check_ratio(channels if channels is not None else unstructured,
                        option="--channels" if channels is not None else "--unstructured")
    if mode == "unstructured" and steps != 1:
        raise DlforgeError("--steps applies to --channels (structured) pruning", where="--steps")
    data = data or RunData.load(run_dir)
    source = data.predictor.model
    example = _example_inputs(data)
    before = {"parameters": count_parameters(source), "macs": macs(source, example),
              "latency_ms_batch1": _latency_ms(source, example)}
    started = time.perf_counter()
    if mode == "structured":
        pruned = prune_structured(source, data, ratio=ratio, steps=steps, finetune_epochs=finetune_epochs,
                                  lr_scale=lr_scale, progress=progress, say=say)
        meta = data.predictor.meta
        fresh_arch = {k: v for k, v in (meta.get("architectures") or {}).items() if k != RESIZED_KEY}
        with torch.random.fork_rng(devices=[]):
            as_built = build_model(data.recipe, data.predictor.signature, pretrained_weights=False,
                                   architectures=fresh_arch)
        pruned.resized = resized_record(pruned, layer_shapes(as_built))
    else:
        pruned = prune_unstructured(source, data, amount=ratio, finetune_epochs=finetune_epochs, lr_scale=lr_scale,
                                    progress=progress)
    seconds = time.perf_counter() - started
    after = {"parameters": count_parameters(pruned), "macs": macs(pruned, example),
             "latency_ms_batch1": _latency_ms(pruned, example), "sparsity": round(sparsity(pruned), 4)}
    name = name or (f"pruned_{ratio:.2f}" if mode == "structured" else f"sparse_{ratio:.2f}")
    details = {"mode": mode, "ratio": ratio, "steps": steps, "finetune_epochs": finetune_epochs,
               "finetune_lr_scale": lr_scale, "seconds": round(seconds, 2), "before": before, "after": after,
               "latency_threads": torch.get_num_threads()}
    if mode == "structured" and after["parameters"] == before["parameters"]:
        details["note"] = ("nothing was pruned: this model has no conv/dense layer outside its heads, recurrent layers, "
                           "embeddings and pretrained backbone; try --unstructured or distill a smaller student")
    if mode == "unstructured":
        details["note"] = ("unstructured pruning zeroes weights but keeps every shape: dense kernels do the same "
                           "work, so latency and the safetensors size do not drop (the gzip size does)")
    path = variant_dir(Path(run_dir), name, Path(out) if out else None)
    write_variant(data, path, pruned, kind="prune", details=details, register=register)
    weights = (path / "model.safetensors").read_bytes()
    source_bytes = (Path(run_dir) / "model.safetensors").stat().st_size
    details["file_bytes"] = {"before": source_bytes, "after": len(weights),
                             "after_gzip": len(gzip.compress(weights, compresslevel=6))}
    write_json(path / "compress.json", {"pass": "prune", "source": str(Path(run_dir).resolve()), **details})
    details["metrics"] = json.loads((path / "metrics.json").read_text(encoding="utf-8"))
    details["variant"] = str(path)
    return details


@passes.register("prune")
def prune_pass(source: Candidate, *, work_dir: Path, ratio: float = 0.5, finetune: int = 1, steps: int = 1,
               data: RunData | None = None) -> list[Candidate]:
    """Structured channel pruning of a torch candidate at `ratio` (the search bisects it); others are left alone.
    `data`: the source run's data already read (the search reads it once for all its trials)."""
    if source.runtime != "torch":
        return []
    name = f"pruned_{ratio:.2f}"
    details = prune_run(source.run_dir, channels=ratio, finetune_epochs=finetune, steps=steps, name=name,
                        out=Path(work_dir) / name, data=data, register=False)
    return [Candidate(name, Path(details["variant"]), "torch", notes={"ratio": ratio, "steps": steps,
                                                                        "finetune_epochs": finetune})]


__all__ = ["check_ratio", "macs", "prune_run", "prune_structured", "prune_unstructured", "sparsity"]
