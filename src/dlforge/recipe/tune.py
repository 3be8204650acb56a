"""Recipe section `tune`: the hyperparameter search space and how `dlforge tune` searches it.

A space maps recipe field paths to distributions written as calls, the way Optuna names them:

    tune:
      space:
        training.optimizer.lr: loguniform(1e-4, 1e-2)
        training.batch_size: choice(64, 128, 256)
        training.regularization.dropout: uniform(0.0, 0.5)
        combiner.layers: choice([64], [128, 64], [256, 128])
        combiner.ensemble: int(1, 8, log=true)
      metric: val.roc_auc

`parse_distribution` reads one such string; a path that is not a field of the recipe, or a distribution whose
values the field refuses, is a recipe error (the cross check `tune_space_fits_the_recipe` in recipe/__init__.py).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Literal

import yaml
from pydantic import Field, field_validator

from dlforge.core.errors import did_you_mean
from dlforge.recipe._base import Strict, _field

DISTRIBUTIONS = ("loguniform", "uniform", "int", "choice")
_CALL = re.compile(r"^\s*([A-Za-z_][A-Za-z_0-9]*)\s*\((.*)\)\s*$", re.DOTALL)
_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")
MAX_CHOICES = 100


@dataclass(frozen=True)
class Distribution:
    """One parsed distribution: `kind` is one of DISTRIBUTIONS; `choices` only for choice."""

    kind: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple = ()

    def endpoints(self) -> list:
        """The values to try against the field's type: both bounds, or every choice."""
        return list(self.choices) if self.kind == "choice" else [self.low, self.high]

    def describe(self) -> str:
        if self.kind == "choice":
            return f"choice({', '.join(map(repr, self.choices))})"
        extra = (", log=true" if self.log and self.kind == "int" else "") + (f", step={self.step}" if self.step else "")
        return f"{self.kind}({self.low}, {self.high}{extra})"


def _scalar(text: Any) -> Any:
    """YAML reads 1e-4 as a string (YAML 1.1 wants a dot): numbers are numbers here, whatever their spelling."""
    if isinstance(text, str) and _NUMBER.match(text.strip()):
        number = float(text)
        return int(number) if re.fullmatch(r"[+-]?\d+", text.strip()) else number
    return text


def parse_distribution(text: Any) -> Distribution:
    """A Distribution from 'loguniform(1e-4, 1e-2)', 'int(1, 4, step=1)', 'choice(32, 64)'; ValueError says why."""
    if not isinstance(text, str):
        raise ValueError(f"{text!r} is not a distribution; write one of loguniform(low, high), uniform(low, high), "
                         "int(low, high[, log=true | step=N]), choice(a, b, ...)")
    match = _CALL.match(text)
    if not match:
        raise ValueError(f"'{text[:80]}' is not a distribution call; write e.g. loguniform(1e-4, 1e-2) or "
                         "choice(32, 64, 128)")
    name, body = match.group(1), match.group(2)
    if name not in DISTRIBUTIONS:
        raise ValueError(f"unknown distribution '{name}'{did_you_mean(name, DISTRIBUTIONS)} "
                         f"(known: {', '.join(DISTRIBUTIONS)})")
    try:
        items = yaml.safe_load(f"[{body}]")
    except yaml.YAMLError:
        raise ValueError(f"the arguments of '{text[:80]}' do not parse; separate them with commas, "
                         "lists as [a, b]") from None
    args, options = [], {}
    for item in items or []:
        if isinstance(item, str) and "=" in item and name != "choice":
            key, value = (part.strip() for part in item.split("=", 1))
            options[key] = _scalar(value) if value.lower() not in ("true", "false") else value.lower() == "true"
        elif isinstance(item, dict) and name != "choice":  # `log: true` written YAML-style
            options.update(item)
        else:
            args.append(_scalar(item))
    if name == "choice":
        if not args:
            raise ValueError("choice() needs at least one value, e.g. choice(32, 64, 128)")
        if len(args) > MAX_CHOICES:
            raise ValueError(f"choice() of {len(args)} values; at most {MAX_CHOICES}")
        dupes = [a for i, a in enumerate(args) if a in args[:i]]
        if dupes:
            raise ValueError(f"choice() lists {dupes[0]!r} twice")
        return Distribution("choice", choices=tuple(tuple(a) if isinstance(a, list) else a for a in args))
    allowed = {"int": ("log", "step"), "uniform": ("step",), "loguniform": ()}[name]
    for key in options:
        if key not in allowed:
            raise ValueError(f"{name}() takes no option '{key}'{did_you_mean(key, allowed)}"
                             + (f" (options: {', '.join(allowed)})" if allowed else ""))
    if len(args) != 2 or not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args):
        raise ValueError(f"{name}() takes two numbers, low and high; got {text.strip()[len(name):][:60]}")
    low, high = args
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError(f"{name}(): the bounds must be finite numbers")
    if low >= high:
        raise ValueError(f"{name}({low}, {high}): low must be below high")
    log, step = options.get("log", False), options.get("step")
    if not isinstance(log, bool):
        raise ValueError(f"{name}(): log is true or false; got {log!r}")
    if name == "loguniform" and low <= 0:
        raise ValueError(f"loguniform({low}, {high}): the bounds of a log scale must be > 0; use uniform() "
                         "for a range that includes 0")
    if name == "int":
        if not all(float(a).is_integer() for a in args):
            raise ValueError(f"int({low}, {high}): the bounds must be whole numbers; use uniform() for fractions")
        low, high = int(low), int(high)
        if log and low < 1:
            raise ValueError(f"int({low}, {high}, log=true): a log scale needs low >= 1")
    if step is not None:
        if not isinstance(step, (int, float)) or isinstance(step, bool) or step <= 0:
            raise ValueError(f"{name}(): step must be a number > 0; got {step!r}")
        if name == "int" and not float(step).is_integer():
            raise ValueError(f"int(): step must be a whole number; got {step}")
        if log:
            raise ValueError(f"{name}(): log and step cannot be combined (Optuna samples either)")
        step = int(step) if name == "int" else float(step)
    return Distribution(name, low, high, log=log or name == "loguniform", step=step)


def _parts(path: str) -> list[str | int]:
    return [int(p) if p.isdigit() else p for p in path.split(".")]


def value_at(data: dict, path: str) -> Any:
    """The value at a dotted path of a recipe's plain data; KeyError(message) names the first part that is not
    there, with the closest field and the fields it could be."""
    current: Any = data
    for depth, part in enumerate(_parts(path)):
        here = ".".join(str(p) for p in _parts(path)[:depth]) or "the recipe"
        if isinstance(current, dict):
            if part not in current:
                keys = list(current)
                raise KeyError(f"'{part}' is not a field of {here}{did_you_mean(str(part), keys)} "
                               f"(fields: {', '.join(map(str, keys))})")
            current = current[part]
        elif isinstance(current, list):
            if not isinstance(part, int) or part >= len(current):
                raise KeyError(f"{here} is a list of {len(current)}; '{part}' is not one of its indexes "
                               f"(0 to {len(current) - 1})")
            current = current[part]
        else:
            what = "null (not set)" if current is None else f"a value ({current!r}), not a section"
            raise KeyError(f"{here} is {what}; '{part}' cannot be reached"
                           + ("; set that section in the recipe to tune its fields" if current is None else ""))
    return current


def set_path(data: dict, path: str, value: Any) -> dict:
    """A copy of `data` with `value` at the dotted `path` (which `value_at` has found)."""
    import copy

    out = copy.deepcopy(data)
    parts = _parts(path)
    target: Any = out
    for part in parts[:-1]:
        target = target[part]
    target[parts[-1]] = value
    return out


class TuneConfig(Strict):
    """`dlforge tune`: what to search and how; each sampled recipe is an ordinary run."""

    space: dict[str, str] = Field(..., min_length=1, description=(
        "Recipe field path -> distribution: loguniform(low, high), uniform(low, high[, step=S]), "
        "int(low, high[, log=true | step=N]), choice(a, b, ...) (values may be lists, e.g. choice([64], [128, 64])). "
        "Paths use dots, list items by index (inputs.0.encoder.dim); each must be a field of this recipe, and "
        "every value the distribution can give must be valid there."))
    metric: str = _field("val.loss", "Logged validation metric the search optimises, reported every epoch for "
                         "pruning (e.g. val.accuracy, val.roc_auc).")
    direction: Literal["auto", "maximize", "minimize"] = _field(
        "auto", "auto: maximize accuracy-like metrics, minimize losses and errors.")
    trials: int = _field(20, "Trials in the study (all workers together); `dlforge tune --trials` overrides it.",
                         ge=1, le=100_000)
    sampler: Literal["tpe", "random"] = _field("tpe", "tpe: Optuna's TPESampler (multivariate, constant liar with "
                                               "several workers); random: RandomSampler. Seeded by `seed`.")
    pruner: Literal["hyperband", "median", "none"] = _field(
        "hyperband", "Stop unpromising trials early on their per-epoch metric: hyperband (HyperbandPruner, min "
        "resource 1 epoch, max training.epochs, reduction factor 3: what Optuna's benchmarks pair with TPE), "
        "median (MedianPruner after 5 trials and 1 epoch), none.")
    warmup_trials: int = _field(5, "median pruner: trials that complete before any is pruned.", ge=0, le=1000)
    seed: int = _field(0, "Seed of the sampler (worker i uses seed + i).", ge=0, le=2**32 - 1)

    @field_validator("space")
    @classmethod
    def _distributions_parse(cls, space: dict[str, str]) -> dict[str, str]:
        problems = []
        for path, text in space.items():
            try:
                parse_distribution(text)
            except ValueError as exc:
                problems.append(f"{path}: {exc}")
        if problems:
            raise ValueError("\n".join(problems))
        return space

    def distributions(self) -> dict[str, Distribution]:
        return {path: parse_distribution(text) for path, text in self.space.items()}

    def maximize(self) -> bool:
        if self.direction != "auto":
            return self.direction == "maximize"
        from dlforge.recipe.training import higher_is_better

        return higher_is_better(self.metric)


__all__ = ["DISTRIBUTIONS", "Distribution", "TuneConfig", "parse_distribution", "set_path", "value_at"]
