"""The base of every recipe section: strict models whose fields all carry a description.

Strict means two things: unknown keys are errors, and a YAML `true`/`false` is only accepted where the field
takes a boolean. pydantic's lax mode reads `epochs: true` as 1 and `lr: false` as 0.0; a recipe that says
`true` for a number has a mistake in it, so every section refuses it, in one validator here.
"""

from __future__ import annotations

import types
import typing
from typing import Annotated, Any, Callable, Literal, Union  # noqa: F401

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator  # noqa: F401


def _allows_bool(annotation) -> bool:
    if annotation is bool or annotation is Any:
        return True
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _allows_bool(typing.get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        return any(_allows_bool(a) for a in typing.get_args(annotation))
    if origin is Literal:
        return any(isinstance(a, bool) for a in typing.get_args(annotation))
    return False


def misplaced_bool(value, annotation) -> bool:
    """True when a boolean sits (at any depth of lists, tuples and maps) where `annotation` takes no boolean."""
    if isinstance(value, bool):
        return not _allows_bool(annotation)
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Annotated:
        return misplaced_bool(value, args[0])
    if origin in (Union, types.UnionType):
        return all(misplaced_bool(value, a) for a in args)
    if isinstance(value, (list, tuple)) and origin in (list, tuple):
        if origin is tuple and args and args[-1] is not Ellipsis:
            return any(misplaced_bool(v, a) for v, a in zip(value, args))
        return bool(args) and any(misplaced_bool(v, args[0]) for v in value)
    if isinstance(value, dict) and origin is dict and len(args) == 2:
        return any(misplaced_bool(v, args[1]) for v in value.values())
    return False


class Strict(BaseModel):
    """Unknown keys are errors, never silently dropped (see Ludwig PR 1186 in STYLE.md); booleans are no numbers."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @model_validator(mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, data):
        # A model validator, not a field validator: pydantic allows none on the discriminator fields (`name`, `type`).
        if isinstance(data, dict):
            wrong = [key for key, value in data.items()
                     if key in cls.model_fields and misplaced_bool(value, cls.model_fields[key].annotation)]
            if wrong:
                raise ValueError("\n".join(f"{key}: true/false is not a valid value here (got {data[key]!r}); "
                                           "write a number or a name" for key in wrong))
        return data


def _field(default, description: str, **constraints):
    return Field(default=default, description=description, **constraints)
