"""Per-example gradient clipping in one backward pass, for DP-SGD: the clipped sum without B copies of each weight.

DP-SGD needs sum_i g_i * min(1, C / ||g_i||) over the examples i of a batch, where g_i is example i's gradient of all
trainable weights. Opacus' hooks materialise g_i for every weight (B copies of the model, written into fresh zeroed
buffers), then take the norms, then contract with the clip factors. `PerExampleClipper` computes the same sum with
less work, in the same single backward pass ("book-keeping" ghost clipping, Bu et al. 2023):

- nn.Linear and nn.Conv2d (groups 1, numeric padding) are both "rows" layers: example i's weight gradient is
  g_i = b_i^T a_i, with a_i (L x K) the layer's input rows and b_i (L x out) its output gradients at L positions
  (a sequence's tokens; a conv's output pixels, a_i its unfolded input patches, K = in*kh*kw; L = 1 for a Linear on
  (batch, features)). Where 2 L^2 < K * out (Bu et al. 2023's rule for mixed ghost clipping) the ghost norm:
  ||g_i||^2 = <a_i a_i^T, b_i b_i^T> from two L x L Grams (||a_i||^2 ||b_i||^2 for L = 1: Goodfellow 2015; Li et al.
  2022), and the clipped sum is ONE matrix product, (clip-scaled b over all n*L rows)^T a: no per-example weight is
  ever formed. Elsewhere (many positions: an image's first conv) g_i by one batched product, or, for 1-3 input
  channels, one grouped convolution; its norm; the clipped sum as one matrix-vector product.
- any other layer with trainable weights: Opacus' own per-example gradient function for its type (GroupNorm,
  LayerNorm, Embedding, ...), its norm and its clipped sum.

Two things keep the clipper's own cost down. Linear and Conv2d outputs are re-attached to autograd by a tap whose
backward passes back only the input gradient (`_Tap`): autograd no longer forms the batch weight gradients that the
clipped sum replaces. The large scratch tensors (a conv's padded input, its unfolded patches) are kept from step to
step (`_Buffers`): fresh ones cost more in page faults than the arithmetic done on them. On mnist_dp's ScatterNet
head (batch 1017, 1 thread) a DP step went from 164 to 48 ms against 29 ms without DP (benchmarks/privacy.md).

The clip factor is Opacus' (C / (||g_i|| + 1e-6), at most 1) over the norm of ALL trainable weights together, so the
sum is the one `DPOptimizer.clip_and_accumulate` forms (tests/test_privacy.py checks them equal); the noise, the
averaging and the step are Opacus' `DPOptimizerFastGradientClipping`, unchanged. A model with a layer type none of
these cover keeps Opacus' hooks (`supports` says which).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

CLIP_EPS = 1e-6  # Opacus' DPOptimizer: factor = C / (norm + 1e-6)
_UNSUPPORTED = "unsupported"  # a layer whose output is not one tensor: clip() refuses


def _own_params(module: nn.Module) -> list[nn.Parameter]:
    return [p for p in module.parameters(recurse=False) if p.requires_grad]


def _opacus_samplers() -> dict:
    from opacus.grad_sample import GradSampleModule

    return GradSampleModule.GRAD_SAMPLERS


def _native_conv(module: nn.Module) -> bool:
    return (type(module) is nn.Conv2d and module.groups == 1 and module.padding_mode == "zeros"
            and not isinstance(module.padding, str))


def _conv_per_example(module: nn.Conv2d, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Example i's weight gradient of a Conv2d with few input channels, (n, out, in*kh*kw), by one grouped convolution.

    The padded input with each example's output gradient as the kernel (dilated by the layer's stride), reading each
    pixel once: for an image's first layer (1-3 channels, many output positions), where unfolding would copy each
    pixel kh*kw times.
    """
    n, channels = a.shape[:2]
    out = b.shape[1]
    ph, pw = module.padding
    x = F.pad(a, (pw, pw, ph, ph)).transpose(0, 1)  # in, n, H, W: the examples become channel groups
    g = F.conv2d(x, b.reshape(n * out, 1, *b.shape[2:]), stride=module.dilation, dilation=module.stride, groups=n)
    kh, kw = module.kernel_size
    return g[..., :kh, :kw].reshape(channels, n, out, kh * kw).permute(1, 2, 0, 3).reshape(n, out, -1)


class _Buffers:
    """Scratch tensors kept from one step to the next, each grown to the largest batch seen (Poisson batches vary).

    A fresh tensor of tens of MB per step costs more in page faults than the arithmetic done on it (torch's CPU
    allocator does not cache, and glibc hands blocks over 32 MB back to the kernel when freed): unfolding
    mnist_dp's first conv into a new tensor took 39 ms, into a kept one 6 ms.
    """

    def __init__(self):
        self.store: dict = {}

    def get(self, key, shape: tuple, like: torch.Tensor, zero: bool = False) -> torch.Tensor:
        numel = math.prod(shape)
        key = (key, tuple(shape[1:]), like.dtype, like.device)  # the per-example layout: a zeroed border stays one
        buf = self.store.get(key)
        if buf is None or buf.numel() < numel:
            size = numel + numel // 8  # room for the next, slightly larger batch
            buf = torch.zeros(size, dtype=like.dtype, device=like.device) if zero else like.new_empty(size)
            self.store[key] = buf
        return buf[:numel].view(shape)


def _unfold(module: nn.Conv2d, a: torch.Tensor, out_hw: tuple, buffers: _Buffers, key) -> torch.Tensor:
    """The input patches of a Conv2d, (n, positions, kh*kw*in): row l of example i is what output pixel l reads.

    Columns in (kh, kw, in) order (channels last, so each copied run is a whole pixel's channels); one copy from a
    strided view of the zero-padded input into a kept buffer (F.unfold instead loops over the examples).
    """
    n, channels, h, w = a.shape
    ph, pw = module.padding
    (kh, kw), (sh, sw), (dh, dw) = module.kernel_size, module.stride, module.dilation
    padded = buffers.get((key, "padded"), (n, h + 2 * ph, w + 2 * pw, channels), a, zero=True)
    padded[:, ph:ph + h, pw:pw + w].copy_(a.permute(0, 2, 3, 1))  # the border is never written: it stays zero
    s = padded.stride()
    lh, lw = out_hw
    patches = padded.as_strided((n, lh, lw, kh, kw, channels), (s[0], s[1] * sh, s[2] * sw, s[1] * dh, s[2] * dw, s[3]))
    rows = buffers.get((key, "rows"), (n, lh, lw, kh, kw, channels), a)
    rows.copy_(patches)
    return rows.view(n, lh * lw, kh * kw * channels)


def _dots(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """<x_i, y_i> for each example i, (n,), from two (n, ...) tensors: a batched product, no tensor of products."""
    n = x.shape[0]
    return torch.bmm(x.reshape(n, 1, -1), y.reshape(n, -1, 1)).view(n)


def _squares(g: torch.Tensor) -> torch.Tensor:
    """Each example's squared norm ||g_i||^2, (n,)."""
    return _dots(g, g)


class _Rows:
    """A layer whose example-i weight gradient is b_i^T a_i: a_i (positions, K) its input rows, b_i (positions, out)
    its output gradients. nn.Linear (positions: a sequence's tokens, or one for (batch, features) input) and
    nn.Conv2d (positions: output pixels; a_i: the unfolded input patches, K = kh*kw*in).

    Ghost norm (Li et al. 2022; Bu et al. 2023's choice) where 2 L^2 < K * out for L positions:
    ||b_i^T a_i||_F^2 = <a_i a_i^T, b_i b_i^T> from two L x L Grams, and the clipped sum ONE matrix product
    (factor-scaled b over all n*L rows)^T a, no per-example weight ever formed. Otherwise each example's gradient by
    one batched product, its norm, and the clipped sum as one matrix-vector product.
    """

    def __init__(self, module: nn.Module, a: torch.Tensor | None, b: torch.Tensor, kernel: tuple | None):
        self.module, self.a, self.b, self.kernel = module, a, b, kernel  # kernel: a conv's (kh, kw, in), else None
        self.weight_on = module.weight.requires_grad
        self.bias_on = module.bias is not None and module.bias.requires_grad
        n, positions, out = b.shape
        self.ghost = a is None or 2 * positions * positions < a.shape[2] * out
        self.g = None

    def _weight_shape(self, flat: torch.Tensor) -> torch.Tensor:
        """(..., out, K) in the rows' column order -> (..., *weight.shape)."""
        if self.kernel is None:
            return flat.reshape(*flat.shape[:-2], *self.module.weight.shape)
        lead = flat.dim() - 2
        grid = flat.reshape(*flat.shape[:-1], *self.kernel)  # ..., out, kh, kw, in
        return grid.permute(*range(lead + 1), lead + 3, lead + 1, lead + 2)  # ..., out, in, kh, kw

    def _raw(self, buffers: _Buffers | None = None, key=None) -> torch.Tensor:
        """Each example's weight gradient in the rows' layout, (n, out, K), by one batched product."""
        a, b = self.a, self.b
        target = buffers.get((key, "per_example"), (b.shape[0], b.shape[2], a.shape[2]), a) if buffers else None
        return torch.bmm(b.transpose(1, 2), a, out=target)

    def per_example(self) -> dict:
        """{param: (n, *param.shape)}: each example's own gradient (a module called more than once adds these)."""
        out = {}
        if self.weight_on:
            out[self.module.weight] = self._weight_shape(self._raw())
        if self.bias_on:
            out[self.module.bias] = self.b.sum(1)
        return out

    def squared_norms(self, buffers: _Buffers, key) -> torch.Tensor:
        a, b = self.a, self.b
        sq = _squares(b.sum(1)) if self.bias_on else b.new_zeros(b.shape[0])
        if not self.weight_on:
            return sq
        if not self.ghost:
            self.g = self._raw(buffers, key)
            return sq + _squares(self.g)
        if b.shape[1] == 1:  # (batch, features): ||b_i a_i^T|| = ||a_i|| ||b_i||
            return sq + _squares(a) * _squares(b)
        gram_a, gram_b = torch.bmm(a, a.transpose(1, 2)), torch.bmm(b, b.transpose(1, 2))
        return sq + _dots(gram_a, gram_b)

    def clipped_sum(self, factor: torch.Tensor) -> dict:
        out = {}
        b = self.b
        if self.weight_on:
            n, positions, width = b.shape
            if self.ghost:
                scaled = (b * factor[:, None, None]).reshape(n * positions, width)
                flat = scaled.t() @ self.a.reshape(n * positions, -1)
            else:
                flat = (factor @ self.g.view(n, -1)).view(self.g.shape[1:])
            out[self.module.weight] = self._weight_shape(flat).contiguous()
        if self.bias_on:
            out[self.module.bias] = factor @ b.sum(1)
        return out


def _pixel_pairs(module: nn.Conv2d, in_hw: tuple, out_hw: tuple, like: torch.Tensor) -> torch.Tensor:
    """The sparse 0/1 matrix (H*W*H*W, L*L) that adds a pixel Gram up into the patch Gram of a Conv2d.

    Output pixel l reads input pixel p(l, j) through kernel tap j (or padding), so <patch_l, patch_l'> =
    sum_j <x_p(l, j), x_p(l', j)>: column (l, l') holds a 1 at each pixel pair (p(l, j), p(l', j)) inside the image.
    """
    (h, w), (lh, lw) = in_hw, out_hw
    (kh, kw), (sh, sw), (dh, dw), (ph, pw) = module.kernel_size, module.stride, module.dilation, module.padding
    rows = torch.arange(lh)[:, None] * sh + torch.arange(kh)[None, :] * dh - ph  # (lh, kh): the input row read
    cols = torch.arange(lw)[:, None] * sw + torch.arange(kw)[None, :] * dw - pw
    r = rows[:, None, :, None].expand(lh, lw, kh, kw).reshape(lh * lw, kh * kw)
    c = cols[None, :, None, :].expand(lh, lw, kh, kw).reshape(lh * lw, kh * kw)
    inside = (r >= 0) & (r < h) & (c >= 0) & (c < w)
    pixel = r * w + c
    positions = lh * lw
    pair = pixel[:, None, :] * (h * w) + pixel[None, :, :]  # (L, L, taps)
    valid = inside[:, None, :] & inside[None, :, :]
    target = torch.arange(positions * positions).view(positions, positions, 1).expand_as(pair)
    indices = torch.stack([pair[valid], target[valid]])
    ones = torch.ones(indices.shape[1], dtype=like.dtype)
    pairs = torch.sparse_coo_tensor(indices, ones, (h * w * h * w, positions * positions), check_invariants=True)
    return pairs.coalesce().to(like.device)


class _ConvGram(_Rows):
    """The ghost norm of a Conv2d from its input's pixel Gram, without unfolding.

    <patch_l, patch_l'> sums, over the kernel taps, channel dot products of input pixels: the pixel Gram x_i^T x_i
    (H*W x H*W, one batched product straight on the NCHW input) added up by a fixed sparse matrix (`_pixel_pairs`)
    gives a_i a_i^T. The clipped sum is aten's convolution weight gradient of the clip-scaled output gradients.
    Chosen over unfolding where the pixel Gram costs at most twice the patch Gram's multiply-adds, (H*W)^2 * in <=
    2 L^2 K (stride-1 convs: about 1/(kh*kw) of it); mnist_dp's 81-channel first conv: 19 instead of 33 ms.
    """

    def __init__(self, module: nn.Conv2d, a: torch.Tensor, b: torch.Tensor, pairs: torch.Tensor):
        n, out = b.shape[:2]
        super().__init__(module, None, b.reshape(n, out, -1).transpose(1, 2), None)
        self.inputs, self.grads, self.pairs = a, b, pairs

    def per_example(self) -> dict:
        module = self.module
        kernel = (*module.kernel_size, self.inputs.shape[1])
        rows = _unfold(module, self.inputs, self.grads.shape[2:], _Buffers(), None)
        return _Rows(module, rows, self.b, kernel).per_example()

    def squared_norms(self, buffers: _Buffers, key) -> torch.Tensor:
        b = self.b
        sq = _squares(b.sum(1)) if self.bias_on else b.new_zeros(b.shape[0])
        n, channels = self.inputs.shape[:2]
        x = self.inputs.reshape(n, channels, -1)
        pixels = buffers.get((key, "pixels"), (n, x.shape[2], x.shape[2]), x)
        torch.bmm(x.transpose(1, 2), x, out=pixels)
        gram_a = torch.mm(pixels.view(n, -1), self.pairs)
        return sq + _dots(gram_a, torch.bmm(b, b.transpose(1, 2)))

    def clipped_sum(self, factor: torch.Tensor) -> dict:
        module = self.module
        out = {}
        scaled = self.grads * factor[:, None, None, None]
        out[module.weight] = torch.ops.aten.convolution_backward(
            scaled, self.inputs, module.weight.detach(), None, module.stride, module.padding, module.dilation, False,
            [0, 0], 1, (False, True, False))[1]
        if self.bias_on:
            out[module.bias] = factor @ self.b.sum(1)
        return out


def supports(model: nn.Module) -> bool:
    """Whether every module holding trainable weights is one `PerExampleClipper` computes per-example norms for."""
    samplers = _opacus_samplers()
    return all(type(m) is nn.Linear or _native_conv(m) or type(m) in samplers
               for m in model.modules() if _own_params(m))


class PerExampleClipper:
    """Hooks on `model` that turn each backward pass into the clipped sum of per-example gradients (see module doc).

    After `loss.backward()` (loss the MEAN over the batch, as Opacus' loss_reduction="mean"), `clip(C)` writes
    sum_i clip_i * g_i into each trainable parameter's `.grad`.
    """

    def __init__(self, model: nn.Module):
        self.layers = [m for m in model.modules() if _own_params(m)]
        self.samplers = _opacus_samplers()
        self.pending: dict[nn.Module, list] = {}
        self.buffers = _Buffers()
        self.pairs: dict = {}  # a conv's pixel-pair matrix per input size (_ConvGram)
        self.handles = [m.register_forward_hook(self._forward) for m in self.layers]

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []
        self.buffers, self.pairs = _Buffers(), {}

    def reset(self) -> None:
        self.pending.clear()

    def _forward(self, module, inputs, output):
        if not torch.is_grad_enabled():
            return None
        if not isinstance(output, torch.Tensor):  # clip() then refuses: this layer's gradient would go unclipped
            self.pending.setdefault(module, []).append(_UNSUPPORTED)
            return None
        if not output.requires_grad:
            return None
        activations = [t.detach() for t in inputs if isinstance(t, torch.Tensor)]
        if type(module) is nn.Linear or _native_conv(module):  # the layer's output, re-attached without the weights
            return _Tap.apply(_TapBackward(self, module, activations, output.detach()), inputs[0], module.weight,
                              module.bias)
        output.register_hook(lambda grad, m=module, a=activations: self._backward(m, a, grad))
        return None

    def _backward(self, module, activations, grad) -> None:
        n = activations[0].shape[0]
        backprop = grad.detach() * n  # the loss is the batch mean: undo it to get each example's own gradient
        calls = self.pending.setdefault(module, [])
        calls.append(self._contribution(module, activations, backprop, key=(module, len(calls))))

    def _contribution(self, module, activations, b, key) -> _Rows | dict:
        """What clip() needs from one call of a layer: a _Rows for a Linear or a Conv2d (a _ConvGram where the
        conv's ghost norm is cheaper from its input's pixel Gram; the norm and the sum are formed later, in clip);
        else {param: per-example gradient} (a conv with 1-3 input channels by grouped convolution, other layer types
        by Opacus' rule)."""
        a = activations[0]
        weight_on = module.weight.requires_grad
        if type(module) is nn.Linear:
            rows = (a.reshape(a.shape[0], -1, a.shape[-1]) if weight_on else None)
            return _Rows(module, rows, b.reshape(b.shape[0], -1, b.shape[-1]), None)
        if _native_conv(module):
            n, out = b.shape[:2]
            channels, (h, w) = a.shape[1], a.shape[2:]
            positions, k = b[0, 0].numel(), channels * math.prod(module.kernel_size)
            b_rows = b.reshape(n, out, positions).transpose(1, 2)
            if not weight_on:
                return _Rows(module, None, b_rows, None)
            ghost = 2 * positions * positions < k * out
            if ghost and (h * w) ** 2 * channels <= 2 * positions * positions * k:
                geometry = (module, (h, w), a.dtype, a.device)
                if geometry not in self.pairs:
                    self.pairs[geometry] = _pixel_pairs(module, (h, w), b.shape[2:], a)
                return _ConvGram(module, a, b, self.pairs[geometry])
            if not ghost and channels <= 3:  # per-example, and unfolding would copy each pixel kh*kw times
                grads = {module.weight: _conv_per_example(module, a, b)}
                if module.bias is not None and module.bias.requires_grad:
                    grads[module.bias] = b_rows.sum(1)
                return grads
            kernel = (*module.kernel_size, channels)
            return _Rows(module, _unfold(module, a, b.shape[2:], self.buffers, key), b_rows, kernel)
        per_example = self.samplers[type(module)](module, activations, b)
        return {p: g for p, g in per_example.items() if p.requires_grad}

    def clip(self, max_grad_norm: float) -> None:
        """Write the clipped per-example gradient sum into `.grad` of every trainable parameter; forget the batch."""
        if not self.pending:
            raise RuntimeError("no per-example gradients were recorded: was backward() run on the model's output?")
        parts: list[tuple[object, _Rows | dict]] = []
        for module, contributions in self.pending.items():
            if any(c is _UNSUPPORTED for c in contributions):
                self.pending.clear()
                raise RuntimeError(f"per-example clipping cannot see the gradient of {type(module).__name__} "
                                   "(its output is not one tensor)")
            if len(contributions) == 1:
                parts.append(((module, 0), contributions[0]))
                continue
            summed: dict = {}  # a module called more than once in a forward pass: add its per-example gradients
            for c in contributions:
                for p, g in (c.per_example() if isinstance(c, _Rows) else c).items():
                    summed[p] = summed[p] + g if p in summed else g
            parts.append(((module, 0), summed))
        squared = None
        for key, part in parts:
            if isinstance(part, _Rows):
                sq = part.squared_norms(self.buffers, key)
            else:
                sq = sum(_squares(g) for g in part.values())
            squared = sq if squared is None else squared + sq
        # A Gram (ghost) norm sums signed terms: rounding can leave a tiny negative square where the norm is ~0.
        factor = (max_grad_norm / (squared.clamp(min=0.0).sqrt() + CLIP_EPS)).clamp(max=1.0)
        clipped: set[int] = set()
        for _, part in parts:
            if isinstance(part, _Rows):
                grads = part.clipped_sum(factor)
            else:
                grads = {p: (factor @ g.reshape(g.shape[0], -1)).view_as(p) for p, g in part.items()}
            for p, g in grads.items():
                p.grad = g
                clipped.add(id(p))
        self.pending.clear()
        for module in self.layers:  # a weight with a gradient that was not clipped would void the guarantee
            if any(p.grad is not None and id(p) not in clipped for p in _own_params(module)):
                raise RuntimeError(f"a {type(module).__name__} layer got a gradient without per-example clipping")


class _Tap(torch.autograd.Function):
    """A Linear's or Conv2d's output, re-attached to autograd with a backward that passes back only the gradient of
    the layer's input, after handing the output gradient to the clipper.

    Autograd would otherwise form each weight's batch gradient, which clip() then overwrites with the clipped sum:
    for mnist_dp's first conv as much work as its forward pass. The input gradient is the layer's own formula
    (Linear: b W; Conv2d: aten's convolution_backward for the input only), so the layers below get what they did.
    """

    @staticmethod
    def forward(ctx, backward, x, weight, bias):
        ctx.backward = backward
        ctx.save_for_backward(weight)  # autograd's version check: the weight must not change before backward
        return backward.output

    @staticmethod
    def backward(ctx, grad):
        weight, = ctx.saved_tensors
        return None, ctx.backward(grad, weight, ctx.needs_input_grad[1]), None, None


class _TapBackward:
    def __init__(self, clipper: PerExampleClipper, module: nn.Module, activations: list, output: torch.Tensor):
        self.clipper, self.module, self.activations, self.output = clipper, module, activations, output

    def __call__(self, grad: torch.Tensor, weight: torch.Tensor, input_grad: bool) -> torch.Tensor | None:
        module, x = self.module, self.activations[0]
        self.clipper._backward(module, self.activations, grad)
        self.output = self.activations = None  # what autograd's own node would free after its backward
        if not input_grad:
            return None
        if type(module) is nn.Linear:
            return grad @ weight
        return torch.ops.aten.convolution_backward(grad, x, weight, None, module.stride, module.padding,
                                                   module.dilation, False, [0, 0], module.groups,
                                                   (True, False, False))[0]


def clipped_sum_optimizer(optimizer, clipper: PerExampleClipper, **dp_kwargs):
    """Opacus' DPOptimizerFastGradientClipping (noise on the sum, averaging, accountant hook) fed by `clipper`.

    Its step first writes the clipped per-example sum into `.grad` (clipper.clip), then Opacus adds
    N(0, (sigma C)^2) to it and divides by the expected batch size, as DPOptimizer does after its own clipping.
    """
    from opacus.optimizers import DPOptimizerFastGradientClipping

    class ClippedSumDPOptimizer(DPOptimizerFastGradientClipping):
        def pre_step(self, closure=None):
            clipper.clip(self.max_grad_norm)
            return super().pre_step(closure)

        def zero_grad(self, set_to_none: bool = False):
            clipper.reset()  # a step skipped by the trainer leaves nothing behind for the next one
            super().zero_grad(set_to_none)

    return ClippedSumDPOptimizer(optimizer, **dp_kwargs)


__all__ = ["PerExampleClipper", "clipped_sum_optimizer", "supports"]
