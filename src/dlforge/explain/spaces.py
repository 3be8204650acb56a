"""Where attributions live: one float tensor per model input, and the model as a function of those tensors.

Images, numbers, binaries and series are floats already: attributions are on the input itself. Token ids and
category ids are not differentiable, so their attributions are on the output of their embedding layer (what
Captum's LayerIntegratedGradients does): a forward hook swaps the embedding's output for the tensor being
attributed. That gives every method one shape of problem, a tuple of float tensors, whatever mix of inputs
the model has, so a multimodal model needs nothing of its own. Cost: one hook call per embedding per forward.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from dlforge.core.errors import ModelError

# Text encoders whose first step embeds each token id on its own (text:ngram embeds hashed n-grams instead).
TOKEN_ENCODERS = ("embed", "cnn", "lstm", "gru", "transformer", "minilm")


@dataclass
class Space:
    """One input's attribution space: `module` is the dotted path of the embedding whose output is attributed
    (None: the input tensor itself); `kind` says how a map is reduced and drawn (image, tokens, column, series)."""

    name: str
    kind: str
    module: str | None = None
    pad_id: int | None = None


def build_spaces(model: nn.Module, signature: dict, recipe) -> list[Space]:
    encoders = {f.name: getattr(getattr(f, "encoder", None), "name", None) for f in recipe.inputs}
    spaces = []
    for name, sig in signature["inputs"].items():
        kind = sig["type"]
        if kind == "image":
            spaces.append(Space(name, "image"))
        elif kind in ("number", "binary"):
            spaces.append(Space(name, "column"))
        elif kind == "category":
            spaces.append(Space(name, "column", f"encoders.__tabular__.embeddings.{name}"))
        elif kind == "sequence":
            spaces.append(Space(name, "series"))
        elif kind == "text":
            encoder = encoders.get(name)
            if encoder not in TOKEN_ENCODERS:
                raise ModelError(f"per-token attributions need an encoder that embeds each token; input '{name}' "
                                 f"uses '{encoder}'", hint=f"token encoders: {', '.join(TOKEN_ENCODERS)}")
            path = (f"encoders.{name}.backbone.embeddings.word_embeddings" if encoder == "minilm"
                    else f"encoders.{name}.embedding")
            spaces.append(Space(name, "tokens", path, sig.get("pad_id", 0)))
        else:
            raise ModelError(f"input '{name}' has type '{kind}', which explain does not support yet")
    return spaces


def trim_padding(x: dict[str, torch.Tensor], spaces: list[Space]) -> dict[str, torch.Tensor]:
    """Token inputs cut to the longest real text of the batch (MiniLM trims the same way inside its forward;
    the embedding swapped in must have the length the encoder will use)."""
    out = dict(x)
    for s in spaces:
        if s.kind == "tokens":
            ids = x[s.name]
            length = max(1, int((ids != s.pad_id).sum(1).max()))
            out[s.name] = ids[:, :length]
    return out


def embed(model: nn.Module, spaces: list[Space], x: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """The float tensor of every space for encoded inputs `x` (embeddings are computed by `model`'s own layers)."""
    with torch.no_grad():
        return tuple((model.get_submodule(s.module)(x[s.name]) if s.module else x[s.name].float()).detach().requires_grad_()
                     for s in spaces)


def baselines(model: nn.Module, spaces: list[Space], x: dict[str, torch.Tensor], keep_ids: dict[str, list[int]]):
    """The reference each attribution is measured from: zeros for images and columns (the scaled mean of a number,
    an empty embedding for a category), and for text the same sentence with every word replaced by [PAD]
    ([CLS]/[SEP] kept), embedded by the model (the reference of Captum's BERT tutorial)."""
    refs = []
    for s, value in zip(spaces, embed(model, spaces, x)):
        if s.kind == "tokens":
            ids = x[s.name]
            keep = torch.isin(ids, torch.tensor(keep_ids.get(s.name, [s.pad_id]), dtype=ids.dtype))
            with torch.no_grad():
                refs.append(model.get_submodule(s.module)(torch.where(keep, ids, torch.full_like(ids, s.pad_id))))
        else:
            refs.append(torch.zeros_like(value))
    return tuple(refs)


class SpaceForward(nn.Module):
    """`model` as a function of the space tensors: forward(*spaces, *ids) -> (N, classes) scores of one output.

    The id tensors ride along as Captum's `additional_forward_args`, which Captum expands with the inputs
    (n_steps copies for IG), so masks and lengths stay right. A binary output gives two columns [-z, z] so that
    `target` picks either label; a number output one column.
    """

    def __init__(self, model: nn.Module, spaces: list[Space], output: str, output_type: str):
        super().__init__()
        self.model, self.spaces, self.output, self.output_type = model, spaces, output, output_type
        self._swap: dict[str, torch.Tensor] = {}
        self._hooks = []
        for s in spaces:
            if s.module:
                self._hooks.append(model.get_submodule(s.module).register_forward_hook(self._hook(s.name)))

    def _hook(self, name: str):
        def swap(module, args, output):
            value = self._swap.get(name)
            if value is None:
                return output
            if value.dim() == 3 and value.shape[1] != output.shape[1]:
                # MiniLM trims each batch to its longest real text; an IG chunk holding only the shorter rows is
                # trimmed further. The cut positions are padding in every row of that chunk: their gradient is 0.
                value = value[:, : output.shape[1]]
            return value
        return swap

    def close(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks.clear()

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        n = len(self.spaces)
        values, ids = args[:n], args[n:]
        id_iter = iter(ids)
        inputs = {}
        for s, value in zip(self.spaces, values):
            if s.module:
                inputs[s.name] = next(id_iter)
                self._swap[s.name] = value
            else:
                inputs[s.name] = value
        try:
            logits = self.model(inputs)[self.output].float()
        finally:
            self._swap.clear()
        if self.output_type == "binary":
            return torch.cat([-logits, logits], dim=-1)
        return logits

    def id_args(self, x: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        return tuple(x[s.name] for s in self.spaces if s.module)


def reduce(space: Space, attribution: torch.Tensor, *, signed: bool) -> torch.Tensor:
    """One number per pixel (image: channels summed), per token, per column (its width or embedding summed)
    or per time step (series). Unsigned methods (saliency) sum magnitudes."""
    a = attribution if signed else attribution.abs()
    if space.kind == "image":
        return a.sum(1)  # (N, H, W)
    if space.kind == "tokens":
        return a.sum(-1)  # (N, L)
    if space.kind == "series":
        return a.sum(1)  # (N, T)
    return a.reshape(a.shape[0], -1).sum(1)  # (N,)


__all__ = ["Space", "SpaceForward", "TOKEN_ENCODERS", "baselines", "build_spaces", "embed", "reduce", "trim_padding"]
