"""Layer widths that differ from the recipe's: how a structurally pruned model is written down and rebuilt.

Channel pruning (compress/prune.py) removes whole output channels of convolutions and units of dense layers, so
the trained module no longer has the shapes its recipe describes. model.json keeps the recipe as written and, in
`architectures["__resized__"]`, one entry per changed layer: its class, its size attributes (in/out channels,
features, groups) and the shape of each of its parameters and buffers. Loading builds the recipe's network, then
`apply_resized` gives each listed layer those sizes (empty tensors, which model.safetensors then fills), so a
pruned run loads without the pruning library and with `load_state_dict(strict=True)` checking every shape.
The record is small (a few lines per layer) and sealed by model.json's content digest like the rest.
"""

from __future__ import annotations

import torch
from torch import nn

from dlforge.core.errors import ModelError

RESIZED_KEY = "__resized__"  # in model.json's `architectures`; never an input name (encoders are keyed by input name)
# Size attributes a layer's forward (or repr) reads; the ones a layer has are recorded and restored.
SIZE_ATTRIBUTES = ("in_channels", "out_channels", "groups", "in_features", "out_features", "num_features",
                   "normalized_shape", "embedding_dim", "num_embeddings")
# A record entry lists at most this many tensors: a damaged model.json cannot make the loader allocate without bound.
MAX_TENSORS_PER_LAYER = 16


def _tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    """A layer's own parameters and buffers (not its children's), by local name."""
    own = dict(module.named_parameters(recurse=False))
    own.update({k: v for k, v in module.named_buffers(recurse=False) if v is not None})
    return own


def layer_shapes(model: nn.Module) -> dict[str, dict[str, list[int]]]:
    """{layer path: {tensor name: shape}} for every layer holding tensors of its own."""
    return {path: {name: list(t.shape) for name, t in _tensors(module).items()}
            for path, module in model.named_modules() if _tensors(module)}


def resized_record(model: nn.Module, before: dict[str, dict[str, list[int]]]) -> dict[str, dict]:
    """The `__resized__` entry of every layer whose tensor shapes differ from `before` (`layer_shapes` of the model
    as the recipe built it): class name, size attributes, tensor shapes."""
    record = {}
    for path, module in model.named_modules():
        shapes = {name: list(t.shape) for name, t in _tensors(module).items()}
        if shapes and shapes != before.get(path):
            attrs = {a: (list(v) if isinstance(v, tuple) else v) for a in SIZE_ATTRIBUTES
                     if isinstance(v := getattr(module, a, None), (int, tuple))}
            record[path] = {"class": type(module).__name__, "attributes": attrs, "shapes": shapes}
    return record


def apply_resized(model: nn.Module, record: dict) -> None:
    """Give each layer in `record` its recorded sizes (tensors left uninitialised: the saved weights fill them)."""
    if not isinstance(record, dict):
        raise ModelError("model.json's architectures.__resized__ is not an object", hint="the run's model.json is damaged")
    for path, entry in record.items():
        try:
            module = model.get_submodule(path)
        except AttributeError:
            raise ModelError(f"model.json resizes layer '{path}', which this recipe's network does not have",
                             hint="the run's model.json is damaged, or was written by another dlforge version") from None
        shapes = entry.get("shapes") if isinstance(entry, dict) else None
        if type(module).__name__ != entry.get("class") or not isinstance(shapes, dict) \
                or len(shapes) > MAX_TENSORS_PER_LAYER:
            raise ModelError(f"model.json's resize record of layer '{path}' does not match a {type(module).__name__}",
                             hint="the run's model.json is damaged")
        for attr, value in (entry.get("attributes") or {}).items():
            if attr in SIZE_ATTRIBUTES and hasattr(module, attr):
                setattr(module, attr, tuple(value) if isinstance(value, list) else value)
        own = _tensors(module)
        for name, shape in shapes.items():
            if name not in own or not (isinstance(shape, list) and all(isinstance(d, int) and 0 <= d < 2**31
                                                                       for d in shape)):
                raise ModelError(f"model.json's resize record of layer '{path}' names a bad tensor '{name}'",
                                 hint="the run's model.json is damaged")
            old = own[name]
            fresh = torch.empty(shape, dtype=old.dtype)
            if isinstance(old, nn.Parameter):
                setattr(module, name, nn.Parameter(fresh, requires_grad=old.requires_grad))
            else:
                module.register_buffer(name, fresh)


__all__ = ["RESIZED_KEY", "apply_resized", "layer_shapes", "resized_record"]
