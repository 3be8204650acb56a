"""Reading recipes: YAML with line numbers, `--set` overrides, and errors that say where and how to fix.

Every problem is reported at once, each as `field.path (line N): what is wrong — did you mean X?`.
"""

from __future__ import annotations

import copy
import re
import types
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from dlforge.core.errors import RecipeError, did_you_mean
from dlforge.recipe import Recipe

BUILTIN_RECIPES = Path(__file__).parent.parent / "recipes"
DEFAULT_RECIPE = BUILTIN_RECIPES / "digits.yaml"
DATA_SUFFIXES = (".csv", ".csv.gz", ".tsv", ".parquet", ".pq", ".npz")  # a data file given where a recipe belongs


class _LineLoader(yaml.SafeLoader):
    """A safe loader that remembers the line of every mapping key and sequence item."""


def _compose_lines(node, path: tuple, lines: dict[tuple, int]) -> None:
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            child = path + (key_node.value,)
            lines[child] = key_node.start_mark.line + 1
            _compose_lines(value_node, child, lines)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _compose_lines(item, path + (index,), lines)


def parse_yaml(text: str, *, origin: str) -> tuple[dict, dict[tuple, int]]:
    """The YAML document as plain data, plus a map from key paths to line numbers."""
    try:
        node = yaml.compose(text, Loader=_LineLoader)
        data = yaml.load(text, Loader=_LineLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        raise RecipeError(f"{origin}{line}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RecipeError(f"{origin}: a recipe is a YAML mapping (name:, data:, inputs:, ...), got {type(data).__name__}")
    lines: dict[tuple, int] = {}
    if node is not None:
        _compose_lines(node, (), lines)
    return data, lines


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply `a.b.c=value` overrides; values are parsed as YAML so `3` is an int and `[1, 2]` a list."""
    for item in overrides:
        if "=" not in item:
            raise RecipeError(f"--set {item!r}: expected KEY=VALUE, e.g. training.epochs=3")
        key, raw = item.split("=", 1)
        parts = [int(p) if p.isdigit() else p for p in key.strip().split(".")]
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        target: Any = data
        for depth, part in enumerate(parts[:-1]):
            if isinstance(target, list):
                if not isinstance(part, int) or part >= len(target):
                    raise RecipeError(f"--set {key}: '{'.'.join(map(str, parts[:depth + 1]))}' is not an index of that list")
                target = target[part]
            else:
                target = target.setdefault(part, {})
                if not isinstance(target, (dict, list)):
                    raise RecipeError(f"--set {key}: '{part}' holds a value, not a section")
        last = parts[-1]
        if isinstance(target, list):
            if not isinstance(last, int) or last >= len(target):
                raise RecipeError(f"--set {key}: '{last}' is not an index of that list")
        target[last] = value
    return data


# ---------------------------------------------------------------- error rendering
def _data_path(loc: tuple, data: Any) -> tuple:
    """Drop pydantic's union tags from an error location, keeping only keys present in the data."""
    path: list = []
    current = data
    for part in loc:
        if isinstance(current, dict) and part in current:
            current = current[part]
            path.append(part)
        elif isinstance(current, list) and isinstance(part, int) and part < len(current):
            current = current[part]
            path.append(part)
        elif isinstance(current, dict) and isinstance(part, str) and part not in current and not path_is_tag(part, current):
            path.append(part)  # a missing key: keep it, the message names it
            current = None
    return tuple(path)


def path_is_tag(part: str, current: dict) -> bool:
    return part in (current.get("name"), current.get("type")) or "[" in part or part.startswith("function-")


def _model_class_at(path: tuple, data: Any) -> type[BaseModel] | None:
    """The pydantic model that validates the mapping at `path` (following discriminators in the data)."""
    annotation: Any = Recipe
    current = data
    for part in path:
        if isinstance(part, int):
            current = current[part] if isinstance(current, list) and part < len(current) else None
            annotation = _item_annotation(annotation)
            continue
        cls = _resolve(annotation, current)
        if not (isinstance(cls, type) and issubclass(cls, BaseModel)) or part not in cls.model_fields:
            return None
        annotation = cls.model_fields[part].annotation
        current = current.get(part) if isinstance(current, dict) else None
    cls = _resolve(annotation, current)
    return cls if isinstance(cls, type) and issubclass(cls, BaseModel) else None


def _item_annotation(annotation):
    while typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            if typing.get_origin(arg) is list:
                return typing.get_args(arg)[0]
    return typing.get_args(annotation)[0] if typing.get_origin(annotation) is list else annotation


def _resolve(annotation, value):
    """Unwrap Optional/Annotated/Union down to the model class that fits `value`."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _resolve(typing.get_args(annotation)[0], value)
    if origin in (typing.Union, types.UnionType):
        models = [_resolve(a, value) for a in typing.get_args(annotation)]
        models = [m for m in models if isinstance(m, type) and issubclass(m, BaseModel)]
        for m in models:
            for tag in ("name", "type"):
                field = m.model_fields.get(tag)
                if isinstance(value, dict) and field is not None and field.default == value.get(tag):
                    return m
        return models[0] if models else None
    return annotation


def _location(path: tuple, lines: dict[tuple, int]) -> str:
    text = ".".join(str(p) for p in path) or "(recipe)"
    probe = path
    while probe and probe not in lines:
        probe = probe[:-1]
    line = lines.get(probe)
    return f"{text} (line {line})" if line else text


def _render(err: dict, data: dict, lines: dict[tuple, int]) -> list[str]:
    kind = err["type"]
    path = _data_path(err["loc"], data)
    where = _location(path, lines)
    given = err.get("input")
    ctx = err.get("ctx", {})
    if kind == "extra_forbidden":
        key = path[-1]
        owner = _model_class_at(path[:-1], data)
        allowed = list(owner.model_fields) if owner else []
        listing = f" (allowed: {', '.join(allowed)})" if allowed else ""
        return [f"{where}: unknown key '{key}'{did_you_mean(key, allowed)}{listing}"]
    if kind in ("union_tag_invalid", "literal_error"):
        expected = ctx.get("expected_tags") or ctx.get("expected", "")
        choices = re.findall(r"'([^']*)'", expected) or [c.strip() for c in str(expected).split(",")]
        if kind == "union_tag_invalid":
            given = ctx.get("tag")
            where = _location(path + (str(ctx.get("discriminator", "name")).strip("'"),), lines)
        return [f"{where}: {given!r} is not one of {', '.join(choices)}{did_you_mean(str(given), choices)}"]
    if kind == "union_tag_not_found":
        return [f"{where}: needs a '{ctx.get('discriminator', 'name').strip(chr(39))}' key"]
    if kind == "missing":
        return [f"{where}: required field is missing"]
    if kind == "value_error":
        # Cross-field problems start with their field path; add the YAML line when we know it.
        problems = [p.strip() for p in str(ctx.get("error", err["msg"])).split("\n") if p.strip()]
        return [_with_line(p, lines) for p in problems]
    shown = "" if isinstance(given, (dict, list)) else f"; got {given!r}"
    return [f"{where}: {err['msg'][0].lower() + err['msg'][1:]}{shown}"]


def _with_line(problem: str, lines: dict[tuple, int]) -> str:
    head, sep, rest = problem.partition(": ")
    if not sep or " " in head:
        return problem
    path = tuple(int(p) if p.isdigit() else p for p in head.split("."))
    return f"{_location(path, lines)}: {rest}"


def validate(data: dict, lines: dict[tuple, int] | None = None) -> Recipe:
    """Validate plain data into a Recipe, raising one RecipeError that lists every problem."""
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        problems: list[str] = []
        for err in exc.errors(include_url=False):
            for problem in _render(err, data, lines or {}):
                if problem not in problems:
                    problems.append(problem)
        raise RecipeError(problems, hint="see `dlforge recipe schema` or docs/recipe.md for every field") from None


def load_recipe(source: str | Path | dict | Recipe | None = None, overrides: list[str] | None = None) -> Recipe:
    """A Recipe from a YAML path, a dict, a Recipe, or None (the built-in default recipe).

    Always a new object: a Recipe or dict given is copied deeply, never changed (workflows resolve
    `lr: auto` and the like on what this returns, and a caller may reuse its own object for the next run).
    """
    if isinstance(source, Recipe):
        if not overrides:
            return source.model_copy(deep=True)  # keeps the private _base_dir
        base_dir = source._base_dir
        recipe = validate(apply_overrides(source.model_dump(mode="json"), overrides))
        recipe._base_dir = base_dir
        return recipe
    if isinstance(source, dict):
        return validate(apply_overrides(copy.deepcopy(source), overrides or []))
    path = Path(source) if source is not None else DEFAULT_RECIPE
    if not path.exists() and (BUILTIN_RECIPES / path.name).exists() and path.parent == Path("."):
        path = BUILTIN_RECIPES / path.name
    if path.name.lower().endswith(DATA_SUFFIXES) or path.is_dir():
        raise RecipeError(f"{path}: this is data, not a recipe; say which column to predict",
                          hint=f"dlforge train {path} --target COLUMN, or write a recipe with dlforge init {path} "
                               "--target COLUMN -o recipe.yaml")
    if not path.is_file():
        raise RecipeError(f"{path}: no such recipe file", hint="give a YAML path; `dlforge train` alone uses the built-in default")
    data, lines = parse_yaml(path.read_text(encoding="utf-8"), origin=str(path))
    data = apply_overrides(data, overrides or [])
    recipe = validate(data, lines)
    recipe._base_dir = str(path.resolve().parent)  # where relative data paths are also looked up
    return recipe


def recipe_base_dir(recipe: Recipe) -> Path:
    return Path(getattr(recipe, "_base_dir", "."))


def dump_recipe(recipe: Recipe) -> str:
    """The resolved recipe, every default filled in, as YAML."""
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
