"""A hypothesis-driven recipe fuzzer: mutations of every shipped recipe through `dlforge recipe check`.

Each case starts from a shipped recipe (recipes/ and src/dlforge/recipes/), applies one to three mutations
(a deleted key, a typo in a key, a wrong-typed or extreme value, YAML features: anchors, aliases, tags, merge
keys, bombs, deep nesting, duplicate sections; a different encoding or damaged bytes; a hostile data.source:
a FIFO, a device, a sparse 20 GB file, a non-UTF-8 or duplicate-header CSV) and runs `recipe check` in this
process, through the CLI's `main`. The promise checked: exit 0, or exit 2 with one `error:` message, never a
traceback, within a per-case deadline (an in-process `signal.alarm`, so a hang is reported, not waited on).

Data is read only where that is cheap (the digits recipes, and sources that the mutation made hostile or tiny);
every other case runs `--no-data` (the schema, the YAML reader and the cross checks).

`python tests/fuzz/recipe_fuzz.py --cases 10000` is the long profile (`make fuzz`); the test in this folder is the
quick one.
"""

from __future__ import annotations

import atexit
import contextlib
import copy
import io
import math
import os
import shutil
import signal
import string
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from hypothesis import strategies as st

REPO = Path(__file__).resolve().parents[2]
SHIPPED = sorted((REPO / "recipes").glob("*.yaml")) + sorted((REPO / "src" / "dlforge" / "recipes").glob("*.yaml"))
BASES = [(p, yaml.safe_load(p.read_text())) for p in SHIPPED]
CHEAP_SOURCES = {"builtin:digits"}
DEADLINE_S = int(os.environ.get("DLFORGE_FUZZ_DEADLINE", "60"))

WEIRD = [True, False, None, "", " ", "x" * 300, "é∂ƒ", [], {}, [1, 2], [[[]]], {"a": 1}, -1, 0, 1, 0.5, -0.5,
         1e308, -1e308, float("inf"), float("-inf"), float("nan"), 2**31, 2**63, 2**64 + 1, 10**100, -(2**63),
         1e-308, 5e-324, "auto", "full", "none", "builtin:nope", "../../etc/passwd", "\x00", "1e400", "0x10",
         "NaN", [100000, 100000], [0.9, 0.1], {"name": "cnn"}, "2147483648", 2147483648]


def _weird(draw):
    """A value from WEIRD, copied: a later mutation may write into it, and the pool must stay the same."""
    return copy.deepcopy(draw(st.sampled_from(WEIRD)))


class Hang(Exception):
    """The per-case deadline passed."""


@dataclass
class Outcome:
    code: int
    stdout: str
    stderr: str
    seconds: float
    error: str | None = None  # "traceback: ..." or "hang" when the promise is broken

    @property
    def broken(self) -> bool:
        return self.error is not None


@dataclass
class Tally:
    cases: int = 0
    accepted: int = 0
    refused: int = 0
    tracebacks: list = field(default_factory=list)
    hangs: list = field(default_factory=list)
    slowest: tuple = (0.0, "")
    with_data: int = 0
    aborted: str | None = None


# ---------------------------------------------------------------- hostile files, made once per process
_SCRATCH: Path | None = None


def scratch() -> Path:
    """A folder with the hostile and tiny data files the `source` mutation picks from."""
    global _SCRATCH
    if _SCRATCH is None:
        _SCRATCH = Path(tempfile.mkdtemp(prefix="dlforge-fuzz-"))
        atexit.register(shutil.rmtree, _SCRATCH, ignore_errors=True)
        fifo = _SCRATCH / "fifo.csv"
        with contextlib.suppress(OSError, AttributeError):
            os.mkfifo(fifo)
        with contextlib.suppress(OSError):
            with open(_SCRATCH / "sparse.csv", "wb") as handle:
                handle.truncate(20 * 2**30)  # 20 GB of holes: no disk used, endless to parse
        (_SCRATCH / "latin1.csv").write_bytes(b"image,label\nx,1\n" + "caf\xe9,2\n".encode("latin-1") * 3)
        (_SCRATCH / "dupes.csv").write_text("image,label,label\n1,a,b\n2,b,a\n3,a,a\n")
        (_SCRATCH / "empty.csv").write_text("")
        (_SCRATCH / "header.csv").write_text("image,label\n")
        (_SCRATCH / "two.csv").write_text("image,label\n1,a\n2,b\n")
        (_SCRATCH / "split.csv").write_text("image,label,split\n1,a,train\n2,b,train\n3,a,test\n4,b,test\n")
        (_SCRATCH / "nul.csv").write_bytes(b"image,label\n" + b"\x00" * 5000)
        (_SCRATCH / "folder").mkdir()
    return _SCRATCH


def hostile_sources() -> list[str]:
    base = scratch()
    return [str(base / n) for n in ("fifo.csv", "sparse.csv", "latin1.csv", "dupes.csv", "empty.csv", "header.csv",
                                    "two.csv", "split.csv", "nul.csv", "folder", "missing.csv")] + \
        ["/dev/zero", "/dev/null", "/", "builtin:digits", "builtin:nope", "data.npz", "x.parquet", "x.txt"]


# ---------------------------------------------------------------- mutations of the parsed recipe
def _paths(node, prefix=()):
    """Every path into the recipe (dict keys and list indices), parents before children."""
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, prefix + (i,))


def _get(node, path):
    for p in path:
        node = node[p]
    return node


def _typo(word: str, draw) -> str:
    if not word:
        return "x"
    i = draw(st.integers(0, len(word) - 1))
    kind = draw(st.sampled_from(["drop", "swap", "insert", "case"]))
    if kind == "drop":
        return word[:i] + word[i + 1:] or "x"
    if kind == "swap" and i + 1 < len(word):
        return word[:i] + word[i + 1] + word[i] + word[i + 2:]
    if kind == "case":
        return word.upper()
    return word[:i] + draw(st.sampled_from(string.ascii_lowercase + "_-")) + word[i:]


def _extreme(value, draw):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return _weird(draw)
    choice = draw(st.sampled_from(["neg", "zero", "huge", "tiny", "big_int", "float", "int_edge", "nan"]))
    return {"neg": -value if value else -1, "zero": 0, "huge": value * 1e300 if value else 1e300, "tiny": 1e-320,
            "big_int": 2**draw(st.sampled_from([31, 32, 53, 63, 64, 100])), "float": float(value) + 0.5,
            "int_edge": draw(st.sampled_from([2**31 - 1, -(2**31), 2**63 - 1])), "nan": math.nan}[choice]


def mutate_data(recipe: dict, draw) -> tuple[dict, str]:
    """One structural mutation of the parsed recipe; returns it and its name."""
    paths = [p for p in _paths(recipe) if p]
    op = draw(st.sampled_from(["delete", "typo", "wrong_type", "extreme", "add_key", "source", "duplicate_item",
                               "class_weights", "precision", "swap_sections", "string_number"]))
    path = draw(st.sampled_from(paths)) if paths else ()
    parent = _get(recipe, path[:-1]) if path else recipe
    last = path[-1] if path else None
    if op == "delete" and path:
        del parent[last]
    elif op == "typo" and isinstance(last, str):
        parent[_typo(last, draw)] = parent.pop(last)
    elif op == "wrong_type" and path:
        parent[last] = _weird(draw)
    elif op == "extreme" and path:
        parent[last] = _extreme(parent[last], draw)
    elif op == "add_key" and isinstance(_get(recipe, path), dict):
        _get(recipe, path)[draw(st.sampled_from(["extra", "seed", "name", "type", "<<", "1", "null"]))] = \
            _weird(draw)
    elif op == "source":
        recipe.setdefault("data", {})
        if isinstance(recipe["data"], dict):
            recipe["data"]["source"] = draw(st.sampled_from(hostile_sources()))
    elif op == "duplicate_item" and isinstance(parent, list):
        parent.append(parent[last])
    elif op == "class_weights":
        outputs = recipe.get("outputs")
        if isinstance(outputs, list) and outputs and isinstance(outputs[0], dict):
            outputs[0]["class_weights"] = copy.deepcopy(draw(st.sampled_from([{"nope": 2.0}, {"0": 2.0, "1": 0.5}, {"0": -1},
                                                                 "balanced", {}, {"0": True}])))
    elif op == "precision":
        recipe.setdefault("training", {})
        if isinstance(recipe["training"], dict):
            recipe["training"]["precision"] = draw(st.sampled_from(["fp16", "bf16", "fp8", 16]))
    elif op == "swap_sections" and len(recipe) >= 2:
        a, b = draw(st.permutations(list(recipe)))[:2]
        recipe[a], recipe[b] = recipe[b], recipe[a]
    elif op == "string_number" and path and isinstance(parent[last], (int, float)) and not isinstance(parent[last], bool):
        parent[last] = str(parent[last])
    return recipe, op


# ---------------------------------------------------------------- mutations of the text and bytes
def laughs(levels: int) -> str:
    lines = ["lol0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"lol{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def mutate_text(text: str, draw) -> tuple[str, str]:
    op = draw(st.sampled_from(["none", "dup_section", "anchor_alias", "tag", "merge", "bomb", "deep_flow",
                               "deep_block", "self_alias", "truncate", "tab", "flow_garbage", "doc_marker",
                               "multi_doc", "bad_indent"]))
    lines = text.splitlines(keepends=True)
    if op == "dup_section":
        text += draw(st.sampled_from(["training:\n  seed: 1\n", "name: again\n", "data:\n  source: x.csv\n"]))
    elif op == "anchor_alias":
        text = text.replace("training:", "training: &t", 1) + "extra: *t\n"
    elif op == "tag" and lines:
        i = draw(st.integers(0, len(lines) - 1))
        tag = draw(st.sampled_from(["!!str", "!!int", "!!float", "!!binary", "!!set", "!!timestamp", "!!python/object:os.system",
                                    "!custom", "!!map", "!!seq", "!!null", "!!bool"]))
        key, sep, value = lines[i].partition(": ")
        if sep:
            lines[i] = f"{key}: {tag} {value}"
        text = "".join(lines)
    elif op == "merge":
        text = "base: &b {epochs: 1}\n" + text.replace("training:\n", "training:\n  <<: *b\n", 1)
    elif op == "bomb":
        text += laughs(draw(st.integers(3, 12)))
    elif op == "deep_flow":
        n = draw(st.sampled_from([60, 499, 500, 2000, 20000]))
        text += "deep: " + "[" * n + "]" * n + "\n"
    elif op == "deep_block":
        n = draw(st.sampled_from([60, 500, 1200]))
        text += "".join(" " * i + f"k{i}:\n" for i in range(n)) + " " * n + "v\n"
    elif op == "self_alias":
        text += draw(st.sampled_from(["loop: &s [*s]\n", "loop: &s {a: *s}\n", "name: &n [1, [2, *n]]\n"]))
    elif op == "truncate" and text:
        text = text[:draw(st.integers(0, len(text) - 1))]
    elif op == "tab":
        text = text.replace("  ", "\t", 1)
    elif op == "flow_garbage":
        text += draw(st.sampled_from(["{", "[", "key: [1, 2", "? complex\n: key\n", "- list at top\n", "@bad\n",
                                      "%YAML 1.1\n", "`tick`\n", "a: 'unclosed\n"]))
    elif op == "doc_marker":
        text = "---\n" + text + "...\n"
    elif op == "multi_doc":
        text += "---\nname: second\n"
    elif op == "bad_indent" and len(lines) > 2:
        i = draw(st.integers(1, len(lines) - 1))
        lines[i] = "   " + lines[i]
        text = "".join(lines)
    return text, op


def mutate_bytes(text: str, draw) -> tuple[bytes, str]:
    op = draw(st.sampled_from(["utf8"] * 6 + ["utf-16", "utf-16-le", "utf-32", "utf-8-sig", "latin1", "random_byte",
                                              "nul", "cut_bytes", "cp1252"]))
    if op == "utf8":
        return text.encode(), op
    if op in ("utf-16", "utf-16-le", "utf-32", "utf-8-sig"):
        return text.encode(op), op
    if op in ("latin1", "cp1252"):
        return (text + "# café — ÿ\n").encode(op, errors="replace"), op
    raw = bytearray(text.encode())
    if not raw:
        return bytes(raw), op
    i = draw(st.integers(0, len(raw) - 1))
    if op == "random_byte":
        raw[i] = draw(st.integers(128, 255))
    elif op == "nul":
        raw[i:i] = b"\x00"
    elif op == "cut_bytes":
        raw = raw[:i]
    return bytes(raw), op


@st.composite
def cases(draw):
    """(recipe path it came from, the bytes of the mutated recipe, whether to read data, the mutations)."""
    path, base = draw(st.sampled_from(BASES))
    recipe = yaml.safe_load(yaml.safe_dump(base))  # a deep copy
    ops = []
    for _ in range(draw(st.integers(1, 3))):
        recipe, op = mutate_data(recipe, draw)
        ops.append(op)
    text = yaml.safe_dump(recipe, sort_keys=False, allow_unicode=True)
    text, op = mutate_text(text, draw)
    ops.append(op)
    raw, op = mutate_bytes(text, draw)
    ops.append(op)
    source = recipe.get("data", {}).get("source") if isinstance(recipe.get("data"), dict) else None
    with_data = isinstance(source, str) and (source in CHEAP_SOURCES or source.startswith(str(scratch()))
                                             or source.startswith("/dev/") or source == "/")
    return str(path.relative_to(REPO)), raw, with_data, ops


# ---------------------------------------------------------------- running one case
def _alarm(signum, frame):
    raise Hang()


def run_case(raw: bytes, with_data: bool, folder: Path, deadline_s: int = DEADLINE_S) -> Outcome:
    """`dlforge recipe check` on these bytes, in this process, with a deadline."""
    from dlforge.cli import main

    path = folder / "recipe.yaml"
    path.write_bytes(raw)
    out, err = io.StringIO(), io.StringIO()
    args = ["recipe", "check", str(path)] + ([] if with_data else ["--no-data"])
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(deadline_s)
    started = time.perf_counter()
    code, error = 0, None
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main(args)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    except Hang:
        code, error = -1, f"hang: no answer within {deadline_s} s"
    except BaseException as exc:  # noqa: B036 - anything that escapes main is a traceback for the user
        import traceback

        code, error = -1, "traceback: " + "".join(traceback.format_exception(exc))[-6000:]
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    seconds = time.perf_counter() - started
    stderr = err.getvalue()
    if error is None:
        if code not in (0, 2):
            error = f"exit code {code}: {stderr[-500:]}"
        elif "Traceback" in stderr or "Traceback" in out.getvalue():
            error = "traceback in the output: " + stderr[-1500:]
        elif code == 2 and not stderr.startswith("error: "):
            error = f"exit 2 without one `error:` message: {stderr[:500]!r}"
    return Outcome(code, out.getvalue(), stderr, seconds, error)


def record(tally: Tally, origin: str, ops: list, with_data: bool, outcome: Outcome) -> None:
    tally.cases += 1
    tally.with_data += with_data
    if outcome.seconds > tally.slowest[0]:
        tally.slowest = (outcome.seconds, f"{origin} {ops}")
    if outcome.error and outcome.error.startswith("hang"):
        tally.hangs.append((origin, ops, outcome.error))
    elif outcome.error:
        tally.tracebacks.append((origin, ops, outcome.error))
    elif outcome.code == 0:
        tally.accepted += 1
    else:
        tally.refused += 1


def fuzz(n_cases: int, *, seed: int | None = None, verbose: bool = False, every: int = 0) -> Tally:
    """Run `n_cases` hypothesis-generated cases; every broken promise is recorded, none stops the run.
    `every` > 0 prints the running summary after every that many cases (a long run's result so far)."""
    from hypothesis import HealthCheck, given, settings

    tally = Tally()
    started = time.perf_counter()
    folder = Path(tempfile.mkdtemp(prefix="dlforge-fuzz-case-"))  # broken cases are kept here for a rerun

    @settings(max_examples=n_cases, deadline=None, database=None, derandomize=seed is not None,
              suppress_health_check=list(HealthCheck), phases=["generate"])
    @given(cases())
    def one(case):
        origin, raw, with_data, ops = case
        outcome = run_case(raw, with_data, folder)
        record(tally, origin, ops, with_data, outcome)
        if every and tally.cases % every == 0:
            print("so far: " + summary(tally, time.perf_counter() - started), flush=True)
        if outcome.broken:
            keep = folder / f"broken-{tally.cases:05d}.yaml"
            keep.write_bytes(raw)
            if verbose:
                print(f"BROKEN {origin} {ops} (kept as {keep}, data: {with_data})\n{outcome.error}\n",
                      file=sys.__stderr__, flush=True)

    try:
        one()
    except Exception as exc:  # hypothesis itself stopped (a flaky strategy): say so beside what was run
        tally.aborted = f"{type(exc).__name__}: {str(exc)[:300]}"
    return tally


def summary(tally: Tally, seconds: float) -> str:
    return (f"{tally.cases} cases ({tally.with_data} reading data): {tally.refused} refused with exit 2, "
            f"{tally.accepted} accepted, {len(tally.tracebacks)} tracebacks, {len(tally.hangs)} hangs; "
            f"{seconds:.0f} s wall; slowest case {tally.slowest[0]:.1f} s ({tally.slowest[1]})"
            + (f"; ABORTED: {tally.aborted}" if tally.aborted else ""))


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=None, help="derandomize (the same cases every run)")
    args = parser.parse_args()
    started = time.perf_counter()
    result = fuzz(args.cases, seed=args.seed, verbose=True, every=250)
    print(summary(result, time.perf_counter() - started))
    try:
        print("load average:", " ".join(f"{x:.2f}" for x in os.getloadavg()))
    except OSError:
        pass
    for origin, ops, error in result.tracebacks[:20] + result.hangs[:20]:
        print(f"\n--- {origin} {ops}\n{error}")
    sys.exit(1 if result.tracebacks or result.hangs or result.aborted else 0)
