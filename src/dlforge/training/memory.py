"""Activation checkpointing (`training.activation_checkpointing`): trade recomputation for activation memory.

A transformer keeps every layer's attention and feed-forward activations for the backward pass; with
checkpointing only each layer's input is kept and the layer runs again during the backward (about one more
forward's time), with the same dropout masks, so the gradients are the same. It applies to the layers that
support it: our TransformerBackbone (text:transformer, sequence:transformer) sets `checkpointing`, and Hugging Face
models (minilm) have `gradient_checkpointing_enable`. A recipe that asks for it without such a layer is refused:
silently doing nothing would hide that the memory was not saved.
"""

from __future__ import annotations

import torch

from dlforge.core.errors import DlforgeError


def enable_activation_checkpointing(model: torch.nn.Module) -> list[str]:
    """Turn checkpointing on in every layer stack of `model` that supports it; the names of those modules."""
    enabled = []
    for name, module in model.named_modules():
        if hasattr(module, "checkpointing") and isinstance(module.checkpointing, bool):
            module.checkpointing = True
            enabled.append(name)
        elif getattr(module, "supports_gradient_checkpointing", False):
            # transformers >= 5 renamed gradient_checkpointing_enable (deprecated, removed in v6)
            if hasattr(module, "activation_checkpointing_enable"):
                module.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                module.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            enabled.append(name)
    if not enabled:
        raise DlforgeError("training.activation_checkpointing: this model has no transformer layers to checkpoint",
                           where="training.activation_checkpointing",
                           hint="it applies to text:transformer, sequence:transformer and minilm encoders; set it "
                                "to false (other models keep few activations per layer)")
    return enabled


__all__ = ["enable_activation_checkpointing"]
