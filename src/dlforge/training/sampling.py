"""Which token inputs decide how training rows are grouped into batches (`training.sampling`).

Random batches unless the rows' token counts are worth grouping by: `auto` groups when an encoder's
cost follows the real length (minilm trims padding, lstm/gru pack it), `by_length` whenever an input
is still token ids. An input fed cached embeddings (the frozen-feature path) has no tokens left.
"""

from __future__ import annotations

from typing import Callable


def length_inputs(recipe, model, signature: dict, *, has_tokens: Callable[[str], bool]) -> dict[str, int]:
    """{input name: padding id} whose real token counts group the batches; empty means random batches."""
    sampling = recipe.training.sampling
    if sampling == "random":
        return {}
    sensitive = getattr(model, "length_sensitive_inputs", dict)()
    sensitive = {name: pad for name, pad in sensitive.items() if has_tokens(name)}
    if sampling == "auto" or sensitive:
        return sensitive
    return {f.name: signature["inputs"][f.name].get("pad_id", 0) for f in recipe.inputs
            if f.type == "text" and has_tokens(f.name)}


def describe(inputs: dict[str, int], model) -> str:
    """One line for `dlforge recipe check`."""
    if not inputs:
        return "random (a fresh shuffle each epoch)"
    why = [f"{name}: {type(model.encoders[name]).__name__} skips padding" for name in inputs
           if getattr(model.encoders[name], "cost_follows_length", False)]
    return f"by token length of {', '.join(inputs)} (little padding per batch" + (f"; {'; '.join(why)})" if why else ")")
