"""Atomic file writes: a crash never leaves half a file where a whole one was.

Every file dlforge writes goes through `atomic_path`: the bytes go to a temp file beside the target, named
`.<name>.<random>.dlforge-tmp` so that a leftover from a kill is recognisable (`clean_temp_files` removes them
on resume and overwrite); the file is flushed to disk (fsync: a power cut after the rename finds the new
content, not an empty file), given the mode a plain `open()` would give it (0666 less the umask, 0644
usually: mkstemp's 0600 once made model.safetensors unreadable to the Docker image's non-root user), and
renamed over the target (`os.replace`, atomic on POSIX and Windows).

JSON never holds `NaN` or `Infinity` (not JSON; most parsers refuse them): `write_json` raises a ValueError
naming the key, or writes null where a value is undefined by nature (`nonfinite="null"`, for metrics).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

TEMP_SUFFIX = ".dlforge-tmp"
# Names of temp files written by dlforge before TEMP_SUFFIX existed (`model.safetensors.tmp`, `state.pt.tmp`).
LEGACY_TEMP_SUFFIX = ".tmp"
_umask_lock = threading.Lock()


def file_mode() -> int:
    """The mode a new file gets from `open()`: 0666 less the process umask (read without changing it on Linux)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    with _umask_lock:  # elsewhere: the only portable read sets it; the lock keeps our own threads out of the gap
        mask = os.umask(0o022)
        os.umask(mask)
    return 0o666 & ~mask


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temp path beside `path` for any writer (torch.save, safetensors, savefig); renamed over `path` on success.

    On an exception the temp file is removed and `path` is untouched; on a kill the temp file stays, with a
    name `clean_temp_files` recognises.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, file_mode())
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, data, *, nonfinite: str = "error") -> None:
    """Write `data` as indented JSON; a NaN or infinite float raises a ValueError naming its key
    (`nonfinite="error"`), or is written as null (`nonfinite="null"`: a metric that is undefined, such as
    ROC AUC on one class)."""
    write_text(path, dumps_json(data, nonfinite=nonfinite))


def dumps_json(data, *, nonfinite: str = "error") -> str:
    try:
        return json.dumps(data, indent=2, default=_jsonable, allow_nan=False) + "\n"
    except ValueError:  # only then walk the data: to find the key, or to replace the values
        pass
    cleaned = _finite(data, "", nonfinite)
    return json.dumps(cleaned, indent=2, default=_jsonable, allow_nan=False) + "\n"


def _finite(value, where: str, nonfinite: str):
    if hasattr(value, "tolist") and not isinstance(value, (int, float, str)):
        value = value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        if nonfinite == "null":
            return None
        raise ValueError(f"{value} at '{where or '.'}' cannot be written as JSON (NaN and Infinity are not JSON)")
    if isinstance(value, dict):
        return {k: _finite(v, f"{where}.{k}" if where else str(k), nonfinite) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v, f"{where}[{i}]", nonfinite) for i, v in enumerate(value)]
    return value


def _jsonable(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def is_temp_file(path: Path) -> bool:
    """A temp file left by an interrupted atomic write (this version's name, or an older version's `X.tmp`)."""
    return path.name.endswith((TEMP_SUFFIX, LEGACY_TEMP_SUFFIX))


def clean_temp_files(folder: Path) -> list[tuple[Path, int]]:
    """Remove the temp files interrupted writes left under `folder` (a run directory); return (path, bytes) each.

    Only for folders dlforge owns, while no other process writes to them (resume, overwrite).
    """
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not path.is_symlink() and is_temp_file(path):
            size = path.stat().st_size
            path.unlink()
            removed.append((path, size))
    return removed


__all__ = ["TEMP_SUFFIX", "atomic_path", "clean_temp_files", "dumps_json", "file_mode", "is_temp_file",
           "write_bytes", "write_json", "write_text"]
