"""The attribution methods, each a thin call of its Captum class on the space tensors (explain/spaces.py).

A method is `(forward, inputs, refs, target, ids, options) -> tuple of attributions` shaped like `inputs`.
IG always runs with `internal_batch_size`, so its n_steps x rows interpolated copies are evaluated in chunks
of that many rows and memory stays at one chunk's activations, however many rows or steps are asked for.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from dlforge.core.errors import DlforgeError, ModelError
from dlforge.core.registry import Registry
from dlforge.explain.spaces import Space


@dataclass
class Options:
    n_steps: int = 50  # IG's Gauss-Legendre points: Captum's default; the delta below says when it is too few
    internal_batch_size: int | None = None  # None: sized from `memory_budget` by a two-row probe
    memory_budget: int = 1 << 30  # bytes of activations one IG chunk may keep for its backward pass
    most_rows: int = 2048  # and never more rows per chunk than the recipe's eval batch size
    n_samples: int = 16  # GradientShap's random points per row
    shap_samples: int = 256  # Kernel SHAP's coalitions per row
    stdevs: float = 0.0
    seed: int = 0
    deltas: list = field(default_factory=list)  # IG's completeness error per row, filled by the call


@dataclass
class Method:
    fn: object
    signed: bool  # whether the map's sign means anything (saliency's is a magnitude)
    needs: str = "any"  # "conv": only for models whose inputs are all conv-encoded images; "table": all columns


methods: Registry[Method] = Registry("attribution method")


def captum():
    try:
        import captum.attr as attr
    except ImportError:
        raise DlforgeError("explanations need Captum", hint="pip install 'dlforge[explain]'") from None
    return attr


def _saved_bytes(forward, inputs, ids, target, rows: int) -> int:
    """Bytes autograd keeps for the backward pass of one forward on `rows` copies of the first row."""
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    first = tuple(v[:1].expand(rows, *v.shape[1:]).detach().requires_grad_() for v in inputs)
    extra = tuple(i[:1].expand(rows, *i.shape[1:]) for i in ids)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        forward(*first, *extra)[torch.arange(rows), target[:1].expand(rows)].sum()
    return total


def rows_for_budget(forward, inputs, ids, target, budget_bytes: int, most: int) -> int:
    """How many rows one IG chunk may hold so that the activations kept for its backward stay near the budget:
    the saved bytes of 2 rows minus those of 1 is the per-row cost (the weights, saved once, cancel out).
    Two one-row forwards, nothing next to IG's n_steps x rows."""
    per_row = max(1, _saved_bytes(forward, inputs, ids, target, 2) - _saved_bytes(forward, inputs, ids, target, 1))
    return int(max(1, min(most, budget_bytes // per_row)))


def _ig(forward, inputs, refs, target, ids, spaces, options: Options):
    if options.internal_batch_size is None:
        options.internal_batch_size = rows_for_budget(forward, inputs, ids, target, options.memory_budget,
                                                      options.most_rows)
    ig = captum().IntegratedGradients(forward)
    attributions, delta = ig.attribute(inputs, baselines=refs, target=target, additional_forward_args=ids or None,
                                       n_steps=options.n_steps, internal_batch_size=options.internal_batch_size,
                                       return_convergence_delta=True)
    options.deltas = delta.detach().abs().tolist()
    return attributions


def _saliency(forward, inputs, refs, target, ids, spaces, options: Options):
    return captum().Saliency(forward).attribute(inputs, target=target, abs=True, additional_forward_args=ids or None)


def _gradient_shap(forward, inputs, refs, target, ids, spaces, options: Options):
    # The reference distribution: the reference and a half-strength one (GradientShap draws a point between an
    # input and a random reference, n_samples times per row); seeded, so a map is the same every call.
    distribution = tuple(torch.cat([r[:1], 0.5 * r[:1]]) for r in refs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(options.seed)
        return captum().GradientShap(forward).attribute(inputs, baselines=distribution, target=target,
                                                        n_samples=options.n_samples, stdevs=options.stdevs,
                                                        additional_forward_args=ids or None)


def _window(space: Space, value: torch.Tensor) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Occlusion's patch and stride per space: about a seventh of an image side (4 px on 28 px) with half-patch
    strides, one token, a whole column, or one time step."""
    if space.kind == "image":
        c, h, w = value.shape[1:]
        side = max(2, min(h, w) // 7)
        return (c, side, side), (c, max(1, side // 2), max(1, side // 2))
    if space.kind == "tokens":
        return (1, value.shape[2]), (1, value.shape[2])
    if space.kind == "series":
        return (value.shape[1], 1), (value.shape[1], 1)
    shape = tuple(value.shape[1:])
    return shape, shape


def _occlusion(forward, inputs, refs, target, ids, spaces, options: Options):
    windows = [_window(s, v) for s, v in zip(spaces, inputs)]
    # Occlusion replaces a patch by a constant; the reference is a tensor per row, so it goes patch by patch.
    refs_b = tuple(r.expand_as(v) if r.shape[0] == 1 else r for r, v in zip(refs, inputs))
    result = captum().Occlusion(forward).attribute(
        inputs, sliding_window_shapes=tuple(w for w, _ in windows), strides=tuple(s for _, s in windows),
        baselines=refs_b, target=target, additional_forward_args=ids or None,
        perturbations_per_eval=max(1, (options.internal_batch_size or options.most_rows) // max(1, inputs[0].shape[0])))
    # Captum gives every element of a patch the patch's whole effect; the maps sum over channels, embedding
    # dimensions or a column's width, so each element gets its share (a token's value is then its effect).
    return tuple(a / _spread(s, a) for s, a in zip(spaces, result))


def _spread(space: Space, value: torch.Tensor) -> int:
    if space.kind in ("image", "series"):
        return value.shape[1]
    return int(value[0].numel()) if space.kind == "column" else value.shape[2]


def _kernel_shap(forward, inputs, refs, target, ids, spaces, options: Options):
    """Kernel SHAP (Lundberg & Lee 2017) with each input column one player: the columns' Shapley values against
    the reference row, estimated by a weighted regression over `shap_samples` coalitions per row (Captum's
    KernelShap). It is the estimator of the `shap` package's KernelExplainer, without that package's numba and
    llvmlite; the players are whole columns, so a category's embedding is one player, as a user reads the table.
    Captum attributes one row per call: the loop is over the rows explained, a handful, never over training data."""
    shap = captum().KernelShap(forward)
    masks = tuple(torch.full((1, *v.shape[1:]), i, dtype=torch.long) for i, v in enumerate(inputs))
    out = [torch.zeros_like(v) for v in inputs]
    for row in range(inputs[0].shape[0]):
        one = tuple(v[row:row + 1] for v in inputs)
        ref = tuple(r[row:row + 1] if r.shape[0] > 1 else r[:1] for r in refs)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(options.seed)
            found = shap.attribute(one, baselines=ref, target=target[row:row + 1], feature_mask=masks,
                                   additional_forward_args=tuple(i[row:row + 1] for i in ids) or None,
                                   n_samples=options.shap_samples, perturbations_per_eval=64)
        for o, a in zip(out, found):
            o[row:row + 1] = a.detach()
    # Every element of a column carries the column's whole value; the maps sum over a column's width.
    return tuple(a / _spread(s, a) for s, a in zip(spaces, out))


def last_conv(module: nn.Module) -> nn.Module | None:
    convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
    return convs[-1] if convs else None


def _grad_cam(forward, inputs, refs, target, ids, spaces, options: Options):
    attr = captum()
    out = []
    for s, value in zip(spaces, inputs):
        layer = last_conv(forward.model.encoders[s.name])
        cam = attr.LayerGradCam(forward, layer).attribute(inputs, target=target, additional_forward_args=ids or None,
                                                          relu_attributions=True)
        # The last conv's grid (7x7 on MNIST after pooling) up to the input's size, one map for every channel.
        cam = attr.LayerAttribution.interpolate(cam, tuple(value.shape[2:]), interpolate_mode="bilinear")
        out.append((cam / value.shape[1]).expand_as(value).detach())
    return tuple(out)


methods.register("integrated_gradients")(Method(_ig, signed=True))
methods.register("saliency")(Method(_saliency, signed=False))
methods.register("occlusion")(Method(_occlusion, signed=True))
methods.register("gradient_shap")(Method(_gradient_shap, signed=True))
methods.register("grad_cam")(Method(_grad_cam, signed=False, needs="conv"))
methods.register("kernel_shap")(Method(_kernel_shap, signed=True, needs="table"))


def valid_methods(model: nn.Module, spaces: list[Space]) -> list[str]:
    """The methods that apply to this model: Grad-CAM needs every input to be an image with a conv encoder."""
    conv = all(s.kind == "image" and last_conv(model.encoders[s.name]) is not None for s in spaces)
    table = all(s.kind == "column" for s in spaces)
    return [name for name, m in methods.items()
            if m.needs == "any" or (m.needs == "conv" and conv) or (m.needs == "table" and table)]


def describe_model(spaces: list[Space]) -> str:
    kinds = sorted({"tabular" if s.kind == "column" else "text" if s.kind == "tokens" else s.kind for s in spaces})
    return kinds[0] if len(kinds) == 1 else "multimodal (" + " + ".join(kinds) + ")"


def get_method(name: str, model: nn.Module, spaces: list[Space]) -> Method:
    valid = valid_methods(model, spaces)
    if name not in valid:
        from dlforge.core.errors import did_you_mean

        why = {"grad_cam": " (it needs a conv image encoder)",
               "kernel_shap": " (its players are table columns: it needs a model of table columns only)"}.get(name, "")
        raise ModelError(f"method '{name}' does not apply to this {describe_model(spaces)} model{why}; "
                         f"valid: {', '.join(valid)}{did_you_mean(name, valid)}", where="--method")
    return methods.get(name)


__all__ = ["Method", "Options", "captum", "describe_model", "get_method", "last_conv", "methods", "valid_methods"]
