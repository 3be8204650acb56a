"""The base of every recipe section: strict models whose fields all carry a description."""

from __future__ import annotations

from typing import Annotated, Callable, Literal, Union  # noqa: F401

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator  # noqa: F401

class Strict(BaseModel):
    """Unknown keys are errors, never silently dropped (see Ludwig PR 1186 in STYLE.md)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _field(default, description: str, **constraints):
    return Field(default=default, description=description, **constraints)

