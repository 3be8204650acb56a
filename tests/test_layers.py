"""The import graph of src/dlforge keeps its layers: each layer imports only the layers below it.

    core -> recipe -> data | models -> evaluation -> training -> artifact -> report -> workflows -> serve -> cli

`data` and `models` are siblings: they meet in `training`, never in each other, so a model can be built from a
signature without the data code and data can be read without torch models. Every import counts: top-level and
function-level (a lazy import hides a dependency from the reader, not from the layering). The top-level
`dlforge/__init__.py` and `_version.py` are the exempt bottom; `from dlforge import NAME` counts as an import
of the module that `dlforge._EXPORTS` says defines NAME. Each test lists every violation at once, file:line.
See docs/CONTRIBUTING.md for the layers and what lives in each.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "dlforge"

# layer -> rank; equal ranks are siblings, which may not import each other.
LAYERS = {"core": 0, "recipe": 1, "data": 2, "models": 2, "evaluation": 3, "training": 4, "artifact": 5,
          "explain": 6, "report": 7, "audit": 8, "compress": 8, "workflows": 9, "serve": 10, "federated": 10, "cli": 11}
EXEMPT = {"dlforge", "dlforge._version"}


@dataclass(frozen=True)
class Import:
    source: str  # importing module, dotted
    target: str  # imported module, dotted
    names: tuple[str, ...]  # names taken by `from target import ...` (empty for `import target`)
    line: int
    top_level: bool  # runs when the importing module is imported (not inside a function or TYPE_CHECKING)

    @property
    def where(self) -> str:
        return f"{module_path(self.source).relative_to(SRC.parent)}:{self.line}"


def module_path(name: str) -> Path:
    path = SRC.joinpath(*name.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports_of(name: str, path: Path, known: dict[str, Path]) -> list[Import]:
    """Every import of a dlforge module in one file, marked top-level or not."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[Import] = []

    def visit(node: ast.AST, top_level: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                visit(child, False)
            elif isinstance(child, ast.If) and _is_type_checking(child):
                visit(child, False)
            elif isinstance(child, ast.Import):
                found.extend(Import(name, a.name, (), child.lineno, top_level)
                             for a in child.names if a.name.split(".")[0] == "dlforge")
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:  # relative: `from . import x`, `from ..core import errors`
                    anchor = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                if base.split(".")[0] != "dlforge":
                    continue
                names = tuple(a.name for a in child.names)
                # `from dlforge.data import readers` imports the module dlforge.data.readers.
                submodules = [f"{base}.{n}" for n in names if f"{base}.{n}" in known]
                rest = tuple(n for n in names if f"{base}.{n}" not in known)
                found.extend(Import(name, m, (), child.lineno, top_level) for m in submodules)
                if rest or not submodules:
                    found.append(Import(name, base, rest, child.lineno, top_level))
            else:
                visit(child, top_level)

    visit(tree, True)
    return found


def exports() -> dict[str, str]:
    """dlforge/__init__.py's `_EXPORTS`: public name -> defining module (the lazy API's real imports)."""
    tree = ast.parse((PACKAGE / "__init__.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == "_EXPORTS" for t in targets):
                return ast.literal_eval(node.value)
    return {}


def all_imports() -> list[Import]:
    known = modules()
    lazy = exports()
    result = []
    for name, path in known.items():
        for imp in imports_of(name, path, known):
            if imp.target == "dlforge" and imp.names:  # `from dlforge import train` imports dlforge.workflows.train
                result.extend(Import(imp.source, lazy.get(n, "dlforge"), (n,), imp.line, imp.top_level)
                              for n in imp.names)
            else:
                result.append(imp)
    return result


def layer_of(module: str) -> str | None:
    if module in EXEMPT:
        return None
    return module.split(".")[1]


def test_every_module_belongs_to_a_layer():
    unknown = sorted({layer_of(m) for m in modules() if layer_of(m) is not None} - set(LAYERS))
    assert not unknown, f"top-level packages with no layer (add them to LAYERS and docs/CONTRIBUTING.md): {unknown}"


def test_layers_import_only_layers_below():
    problems = []
    for imp in all_imports():
        src, dst = layer_of(imp.source), layer_of(imp.target)
        if src is None or dst is None or src == dst or src not in LAYERS or dst not in LAYERS:
            continue
        if LAYERS[dst] > LAYERS[src]:
            problems.append(f"{imp.where}: {src} imports {imp.target} (layer '{dst}' is above '{src}')")
        elif LAYERS[dst] == LAYERS[src]:
            problems.append(f"{imp.where}: {src} imports {imp.target} ('{src}' and '{dst}' are siblings)")
    assert not problems, f"{len(problems)} import(s) against the layers:\n" + "\n".join(problems)


def test_no_private_name_is_imported_from_another_module():
    """`_helper` is the module's own business; a name someone else needs is public (and documented).

    A private module (`recipe/_base.py`) is its package's shared toolbox: its siblings may take its names."""
    problems = []
    for imp in all_imports():
        if imp.target == imp.source:
            continue
        shared = imp.target.rpartition(".")[2].startswith("_") and (
            imp.source.startswith(imp.target.rpartition(".")[0] + ".") or imp.source == imp.target.rpartition(".")[0])
        for n in imp.names:
            if n.startswith("_") and not n.startswith("__") and not shared:
                problems.append(f"{imp.where}: imports private {n} from {imp.target}")
    assert not problems, f"{len(problems)} private import(s):\n" + "\n".join(problems)


def test_no_import_cycles_at_module_level():
    """A cycle among top-level imports makes the import order matter (a half-initialised module)."""
    graph: dict[str, set[str]] = {m: set() for m in modules()}
    lines: dict[tuple[str, str], str] = {}
    for imp in all_imports():
        if imp.top_level and imp.target in graph and imp.target != imp.source:
            graph[imp.source].add(imp.target)
            lines.setdefault((imp.source, imp.target), imp.where)
    cycles = [c for c in strongly_connected(graph) if len(c) > 1]
    described = []
    for cycle in cycles:
        members = set(cycle)
        edges = sorted(f"  {lines[(a, b)]}: {a} -> {b}" for a in cycle for b in graph[a] if b in members)
        described.append(f"cycle among {sorted(cycle)}:\n" + "\n".join(edges))
    assert not cycles, f"{len(cycles)} import cycle(s):\n" + "\n".join(described)


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components, iterative (no recursion limit on a deep graph)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    components.append(component)
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(graph[child]))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return components


def test_the_checker_sees_function_level_and_relative_imports(tmp_path):
    """The checker itself: a lazy import inside a function and a relative import are both found."""
    known = {"dlforge.data.x": tmp_path / "x.py", "dlforge.core.errors": tmp_path / "errors.py"}
    source = tmp_path / "x.py"
    source.write_text("from ..core import errors\n\ndef f():\n    from dlforge.training.trainer import Trainer\n")
    found = imports_of("dlforge.data.x", source, known)
    assert [(i.target, i.names, i.line, i.top_level) for i in found] == [
        ("dlforge.core.errors", (), 1, True), ("dlforge.training.trainer", ("Trainer",), 4, False)]
    assert sorted(map(sorted, strongly_connected({"a": {"b"}, "b": {"a"}, "c": {"a"}}))) == [["a", "b"], ["c"]]
