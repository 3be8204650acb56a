"""Variants: a compressed model as a complete run directory inside its source run, `RUN/variants/<name>/`.

A variant holds what every consumer of a run reads (model.json, model.safetensors, run.json; model.onnx and
export.json when it runs on onnx) plus `variant.json`: what it was made from and by which pass, and the
runtime it is meant for (an int8 variant exists only as ONNX: `dlforge.load`, `predict`, `evaluate` and `serve`
then default to onnx). The source's run.json lists its variants.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from dlforge.artifact.format import MODEL_JSON, RUN_JSON, WEIGHTS, read_run_json
from dlforge.core.errors import ArtifactError
from dlforge.core.files import write_json

VARIANTS = "variants"
VARIANT_JSON = "variant.json"
NAME_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789_.-+")


def variant_dir(run_dir: Path, name: str, *, overwrite: bool) -> Path:
    """An empty folder for variant `name` of `run_dir` (the name is checked; an existing one needs `overwrite`)."""
    run_dir = Path(run_dir)
    if not name or set(name.lower()) - NAME_CHARS or name.startswith("."):
        raise ArtifactError(f"variant name {name!r} may only hold letters, digits and _ . - +", where="--name")
    folder = run_dir / VARIANTS / name
    if folder.exists():
        if not overwrite:
            raise ArtifactError(f"variant '{name}' exists already", where=str(folder),
                                hint="pass --overwrite to replace it, or --name to give this one another name")
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    return folder


def write_variant(run_dir: Path, folder: Path, *, pass_name: str, runtime: str, notes: dict,
                  listed: bool = True) -> dict:
    """Copy the run's model.json, weights and run.json into `folder`, write variant.json, list it in the source's
    run.json (unless `listed` is False: a compression candidate outside the source).

    run.json's data source and base directory stay absolute, so the variant evaluates on the same split."""
    run_dir, folder = Path(run_dir), Path(folder)
    for name in (MODEL_JSON, WEIGHTS):
        if not (folder / name).exists():
            shutil.copyfile(run_dir / name, folder / name)
    record = read_run_json(run_dir)
    write_json(folder / RUN_JSON, {**record, "variants": []})
    info = {"name": folder.name, "source": str(run_dir.resolve()), "pass": pass_name, "runtime": runtime,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "notes": notes}
    write_json(folder / VARIANT_JSON, info)
    if listed and (run_dir / RUN_JSON).is_file():
        listed = [v for v in record.get("variants", []) if not (isinstance(v, dict) and v.get("name") == folder.name)]
        listed.append({"name": folder.name, "path": f"{VARIANTS}/{folder.name}", "pass": pass_name, "runtime": runtime})
        write_json(run_dir / RUN_JSON, {**record, "variants": listed})
    return info


def read_variant(run_dir: Path) -> dict | None:
    path = Path(run_dir) / VARIANT_JSON
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        raise ArtifactError(f"{VARIANT_JSON} is not valid JSON", where=str(path)) from None


__all__ = ["VARIANTS", "VARIANT_JSON", "read_variant", "variant_dir", "write_variant"]
