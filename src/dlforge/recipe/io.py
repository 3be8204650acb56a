"""Reading recipes: YAML with line numbers, `--set` overrides, and errors that say where and how to fix.

Every problem is reported at once, each as `field.path (line N): what is wrong — did you mean X?`.

A recipe is untrusted text (shared, downloaded, generated), so the reader has limits that hold before any
work is done: the file's size, its encoding, the nesting depth, and the size of the document once every
alias is expanded (a 1 KB "billion laughs" recipe otherwise grows to gigabytes in the validator). The
composer counts each node's expanded size as it builds the node graph, once per node (aliases share their
anchor's count), so the check costs one pass over the text and never expands anything. Duplicate keys are
errors, not last-wins (`training:` written twice would silently drop the first section's settings).
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

# Limits of the reader. A shipped recipe is under 3 KB, 6 levels deep and about 100 nodes.
MAX_RECIPE_BYTES = 1_000_000
MAX_DEPTH = 50  # nesting of sections and lists, counted through aliases
MAX_NODES = 100_000  # nodes once every alias is expanded
MAX_CHARS = 5_000_000  # characters of all scalars once every alias is expanded
_BOMS = ((b"\xef\xbb\xbf", "utf-8-sig"), (b"\xff\xfe\x00\x00", "utf-32"), (b"\x00\x00\xfe\xff", "utf-32"),
         (b"\xff\xfe", "utf-16"), (b"\xfe\xff", "utf-16"))


class _LineLoader(yaml.SafeLoader):
    """A safe loader that enforces the limits above while composing, and rejects duplicate keys.

    `_measure[id(node)]` is (nodes, characters, height) of the node with its aliases expanded; children are
    measured before their parent is finished, so each node is counted once whatever the number of aliases to it.
    """

    def __init__(self, stream, origin: str = "recipe"):
        super().__init__(stream)
        self._origin = origin
        self._depth = 0
        self._open_anchors: set[str] = set()
        self._measure: dict[int, tuple[int, int, int]] = {}

    def _fail(self, message: str, mark, hint: str) -> RecipeError:
        line = f" line {mark.line + 1}" if mark is not None else ""
        return RecipeError(f"{self._origin}{line}: {message}", hint=hint)

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            if event.anchor in self._open_anchors:
                raise self._fail(f"alias *{event.anchor} refers to the node that contains it (an endless structure)",
                                 event.start_mark, "an alias may only repeat a finished section; copy the values instead")
            return super().compose_node(parent, index)  # its anchor is already measured
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise self._fail(f"nested more than {MAX_DEPTH} levels deep", event.start_mark,
                             "a recipe is a few levels of sections and lists; check the indentation and brackets")
        anchor = getattr(event, "anchor", None)
        if anchor is not None:
            self._open_anchors.add(anchor)
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
            self._open_anchors.discard(anchor)
        self._measure_node(node)
        return node

    def _measure_node(self, node) -> None:
        if isinstance(node, yaml.ScalarNode):
            self._measure[id(node)] = (1, len(node.value), 1)
            return
        children = [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else node.value
        nodes, chars, height = 1, 0, 0
        for child in children:
            n, c, h = self._measure[id(child)]
            nodes, chars, height = nodes + n, chars + c, max(height, h)
        self._measure[id(node)] = (nodes, chars, height + 1)
        why = ("nested more than {MAX_DEPTH} levels deep once its aliases are expanded" if height + 1 > MAX_DEPTH else
               f"more than {MAX_NODES:,} values once its aliases are expanded" if nodes > MAX_NODES else
               f"more than {MAX_CHARS:,} characters once its aliases are expanded" if chars > MAX_CHARS else None)
        if why:
            raise self._fail(why.replace("{MAX_DEPTH}", str(MAX_DEPTH)), node.start_mark,
                             "aliases (*name) repeat their anchor's content; a recipe needs few of them")

    def compose_mapping_node(self, anchor):
        node = super().compose_mapping_node(anchor)
        seen: dict[tuple, Any] = {}
        for key, _ in node.value:
            if not isinstance(key, yaml.ScalarNode) or key.tag == "tag:yaml.org,2002:merge":
                continue
            ident = (key.tag, key.value)  # the composer has resolved every tag: `1` and "1" differ
            if ident in seen:
                raise self._fail(f"key '{key.value}' appears twice in one section (first at line "
                                 f"{seen[ident].line + 1}, again at line {key.start_mark.line + 1})", key.start_mark,
                                 "a second copy would silently replace the first; merge them into one")
            seen[ident] = key.start_mark
        return node


def _compose_lines(node, path: tuple, lines: dict[tuple, int]) -> None:
    """Line of every key path. The composer has bounded the expanded size, so walking aliases is cheap."""
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            child = path + (key_node.value,)
            lines[child] = key_node.start_mark.line + 1
            _compose_lines(value_node, child, lines)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _compose_lines(item, path + (index,), lines)


def load_yaml(text: str, *, origin: str):
    """`text` as plain data within the reader's limits, and its node graph (None for an empty document)."""
    loader = None
    try:
        loader = _LineLoader(text, origin)  # its reader already refuses control characters
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).replace("\n", " ")
        raise RecipeError(f"{origin}{line}: not valid YAML ({problem})") from None
    except (ValueError, TypeError, AttributeError, OverflowError, IndexError, KeyError) as exc:
        # PyYAML's constructors of tagged values (`!!timestamp official`, `!!int x`) raise these, not YAMLError.
        raise RecipeError(f"{origin}: a tagged value does not parse ({type(exc).__name__}: {str(exc)[:100]})",
                          hint="remove the !!tag; a recipe needs no tags") from None
    except RecursionError:  # a limit above should come first; this keeps any other deep path from a traceback
        raise RecipeError(f"{origin}: nested too deeply", hint="a recipe is a few levels of sections and lists") from None
    finally:
        if loader is not None:
            loader.dispose()
    return data, node


def parse_yaml(text: str, *, origin: str) -> tuple[dict, dict[tuple, int]]:
    """The YAML document as plain data, plus a map from key paths to line numbers."""
    data, node = load_yaml(text, origin=origin)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RecipeError(f"{origin}: a recipe is a YAML mapping (name:, data:, inputs:, ...), got {type(data).__name__}")
    lines: dict[tuple, int] = {}
    if node is not None:
        _compose_lines(node, (), lines)
    return data, lines


def read_recipe_text(path: Path) -> str:
    """The text of a recipe file: a regular file under MAX_RECIPE_BYTES, UTF-8 (or UTF-16/32 with a BOM)."""
    if not path.is_file():
        what = "not a regular file" if path.exists() else "no such recipe file"
        raise RecipeError(f"{path}: {what}", hint="give a YAML path; `dlforge train` alone uses the built-in default")
    size = path.stat().st_size
    if size > MAX_RECIPE_BYTES:
        raise RecipeError(f"{path}: {size:,} bytes; a recipe is at most {MAX_RECIPE_BYTES:,}",
                          hint="is this the data file? data goes in data.source")
    with path.open("rb") as handle:
        raw = handle.read(MAX_RECIPE_BYTES + 1)
    for bom, encoding in _BOMS:
        if raw.startswith(bom):
            try:
                return raw.decode(encoding)
            except UnicodeDecodeError as exc:
                raise RecipeError(f"{path}: starts with a {encoding} byte-order mark but is not {encoding} "
                                  f"(byte {exc.start})", hint="re-save the recipe as UTF-8") from None
    if b"\x00" in raw:
        at = raw.index(b"\x00")
        line = raw.count(b"\n", 0, at) + 1
        raise RecipeError(f"{path}: holds NUL bytes (byte {at}, line {line}): binary data, or "
                          "UTF-16 without a byte-order mark", hint="re-save the recipe as UTF-8") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise RecipeError(f"{path}: not UTF-8 text (byte {exc.start}, line {line}: {raw[exc.start:exc.start + 4]!r})",
                          hint="re-save the recipe as UTF-8") from None


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply `a.b.c=value` overrides; values are parsed as YAML so `3` is an int and `[1, 2]` a list."""
    for item in overrides:
        if "=" not in item:
            raise RecipeError(f"--set {item!r}: expected KEY=VALUE, e.g. training.epochs=3")
        key, raw = item.split("=", 1)
        parts = [int(p) if p.isdigit() else p for p in key.strip().split(".")]
        try:
            value, _ = load_yaml(raw, origin=f"--set {key}")
        except RecipeError as exc:
            if "not valid YAML" not in exc.message:
                raise
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
    for k in range(len(path) - 1, 0, -1):  # a key holding dots (tune.space's field paths) is one YAML key
        dotted = path[:k] + (".".join(str(p) for p in path[k:]),)
        if dotted in lines:
            return f"{text} (line {lines[dotted]})"
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
        # Problems found by a section's validator start with their field path within that section (the recipe's
        # cross checks: the whole path); add the section's path and the YAML line when we know it.
        problems = [p.strip() for p in str(ctx.get("error", err["msg"])).split("\n") if p.strip()]
        return [_with_line(p, lines, path) for p in problems]
    shown = "" if isinstance(given, (dict, list)) else f"; got {_short(given)}"
    return [f"{where}: {err['msg'][0].lower() + err['msg'][1:]}{shown}"]


def _short(value, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit - 20]}... ({len(text):,} characters)"


def _with_line(problem: str, lines: dict[tuple, int], section: tuple = ()) -> str:
    head, sep, rest = problem.partition(": ")
    if not sep or " " in head:
        return f"{_location(section, lines)}: {problem}" if section else problem
    path = section + tuple(int(p) if p.isdigit() else p for p in head.split("."))
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
    data, lines = parse_yaml(read_recipe_text(path), origin=str(path))
    data = apply_overrides(data, overrides or [])
    recipe = validate(data, lines)
    recipe._base_dir = str(path.resolve().parent)  # where relative data paths are also looked up
    return recipe


def recipe_base_dir(recipe: Recipe) -> Path:
    return Path(getattr(recipe, "_base_dir", "."))


def dump_recipe(recipe: Recipe) -> str:
    """The resolved recipe, every default filled in, as YAML."""
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
