"""The callback contract: the hooks the trainer calls, their no-op base, and the registry the recipe selects from.

Hooks, in the order the trainer calls them (every hook gets the trainer first):
    on_fit_start(trainer)                      before the first step (also on resume)
    on_epoch_start(trainer, epoch)             epoch counts from 0
    on_step_end(trainer, step)                 after each batch's step; `step` counts batches within the epoch
    on_epoch_end(trainer, epoch, metrics)      returns a stop vote; every callback votes and any stop wins,
                                               so no callback can undo another's decision (STYLE.md, Keras #37587)
    on_fit_end(trainer, result)                after the last epoch (not on an interrupt)
    on_run_end(trainer, run_dir)               `dlforge.train` calls it once the run directory is complete
A callback needs no base class (any object with some of these methods will do, as in Lightning Fabric);
subclassing `Callback` documents the hooks and lets the trainer skip the ones left as defaults. Hooks are
resolved once when the trainer is built, never looked up per step.

`training.callbacks: [name, {name: ..., <option>: ...}]` builds registered callbacks by name: a new one is
one file with `@callbacks.register("name")` on a class whose options are keyword-only; an optional static
`check_recipe(recipe, **options) -> list[str]` reports bad options or recipe conflicts before any data is read.
"""

from __future__ import annotations

import inspect
from typing import Callable

from dlforge.core.errors import RecipeError, did_you_mean
from dlforge.core.registry import Registry

HOOKS = ("on_fit_start", "on_epoch_start", "on_step_end", "on_epoch_end", "on_fit_end", "on_run_end")

callbacks: Registry[type] = Registry("callback")


def _default(hook: Callable) -> Callable:
    hook.default_hook = True  # the trainer skips hooks left as this no-op (Keras marks them @utils.default)
    return hook


class Callback:
    """No-op hooks; override the ones you need. See the module docstring for when each is called."""

    @_default
    def on_fit_start(self, trainer) -> None:
        pass

    @_default
    def on_epoch_start(self, trainer, epoch: int) -> None:
        pass

    @_default
    def on_step_end(self, trainer, step: int) -> None:
        pass

    @_default
    def on_epoch_end(self, trainer, epoch: int, metrics: dict[str, float]) -> bool:
        return False

    @_default
    def on_fit_end(self, trainer, result) -> None:
        pass

    @_default
    def on_run_end(self, trainer, run_dir) -> None:
        pass


def resolve_hooks(objects) -> dict[str, list[Callable]]:
    """{hook name: the bound methods that really implement it}, in callback order; computed once per trainer."""
    hooks: dict[str, list[Callable]] = {name: [] for name in HOOKS}
    for obj in objects:
        for name in HOOKS:
            fn = getattr(obj, name, None)
            if fn is not None and not getattr(fn, "default_hook", False):
                hooks[name].append(fn)
    return hooks


def _entries(recipe) -> list[tuple[str, str, dict]]:
    """(field path, name, options) of each `training.callbacks` entry."""
    out = []
    for i, entry in enumerate(recipe.training.callbacks):
        name, options = (entry, {}) if isinstance(entry, str) else (entry.name, entry.options())
        out.append((f"training.callbacks.{i}", name, options))
    return out


def check_callbacks(recipe) -> None:
    """Every `training.callbacks` entry names a registered callback and only options it takes: all problems at once."""
    problems = []
    for path, name, options in _entries(recipe):
        if name not in callbacks:
            problems.append(f"{path}: unknown callback '{name}'{did_you_mean(name, callbacks.names())} "
                            f"(registered: {', '.join(callbacks.names()) or 'none'})")
            continue
        signature = inspect.signature(callbacks.get(name))
        try:
            signature.bind(**options)
        except TypeError as exc:
            takes = ", ".join(p for p in signature.parameters) or "no options"
            problems.append(f"{path}: callback '{name}' {exc} (it takes: {takes})")
            continue
        check = getattr(callbacks.get(name), "check_recipe", None)  # optional: problems with the options or recipe
        if check is not None:
            problems.extend(check(recipe, **options))
    if problems:
        raise RecipeError(problems, hint="register a callback with @dlforge.training.callbacks.callbacks.register(name)")


def build_callbacks(recipe) -> list:
    """The recipe's `training.callbacks`, built by name with their options, in the order written."""
    check_callbacks(recipe)
    return [callbacks.get(name)(**options) for _, name, options in _entries(recipe)]
