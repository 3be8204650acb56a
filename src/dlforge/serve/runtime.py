"""The model behind the server: validated records in, one vectorised forward pass per batch, JSON rows out.

The forward pass is the Predictor's runtime (artifact/runtimes.py), as for `predict` and `evaluate`.

A batch merges the columns of every request, encodes them with the model's fitted features in one go
(vectorised per column, not per row), runs one forward pass and splits the rows back per request. If
the merged batch fails to encode (one request's image cannot be decoded, say), each request is
encoded alone so that only the faulty one gets the error.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from dlforge.core.errors import DlforgeError, PredictError
from dlforge.data.features import kind_of
from dlforge.data.prepare import encode
from dlforge.data.table import Table

DEFAULT_TOP_K = 5


@dataclass
class Records:
    """One request's rows as columns (input name → list of values), and how many classes to return."""

    columns: dict[str, list]
    rows: int
    top_k: int | None = None


def weights_version(run_dir: Path) -> str:
    """The first 12 hex digits of the weights' sha256: the model's version as clients see it. A compressed variant
    (variant.json beside an ONNX graph: int8, say) is versioned by its graph, since its weights file is the source's."""
    run_dir = Path(run_dir)
    weights = run_dir / "model.safetensors"
    if (run_dir / "variant.json").is_file() and (run_dir / "model.onnx").is_file():
        weights = run_dir / "model.onnx"
    digest = hashlib.sha256()
    with open(weights, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:12]


class ModelRuntime:
    def __init__(self, predictor, *, threads: int | None = None):
        if threads:
            torch.set_num_threads(threads)
        self.predictor = predictor
        self.signature = predictor.signature
        self.name = predictor.name
        self.version = weights_version(predictor.run_dir)
        self.output_names = list(self.signature["outputs"])
        self.kinds = {name: kind_of(sig) for name, sig in self.signature["inputs"].items()}

    # -- inputs --------------------------------------------------------------------------------------
    def encode(self, jobs: Sequence[Records]) -> dict[str, torch.Tensor]:
        names = list(self.signature["inputs"])
        merged = {n: [v for job in jobs for v in job.columns[n]] for n in names}
        # Each input's kind turns the validated JSON values into the column its feature transforms.
        inputs = self.signature["inputs"]
        table = Table({n: self.kinds[n].request_column(merged[n], inputs[n]) for n in names}, "request")
        return encode(table, self.predictor.inputs, None).x

    # -- a batch ---------------------------------------------------------------------------------------
    def run(self, jobs: Sequence[Records]) -> list:
        """One result (list of prediction dicts) or DlforgeError per request, from as few forward passes as possible."""
        try:
            return self._predict(jobs, self.encode(jobs))
        except DlforgeError:
            if len(jobs) == 1:
                raise
        results: list = []
        for job in jobs:  # find which request is at fault; the others still get answers
            try:
                results.extend(self._predict([job], self.encode([job])))
            except DlforgeError as exc:
                results.append(exc)
        return results

    def _predict(self, jobs: Sequence[Records], x: dict[str, torch.Tensor]) -> list:
        logits = self.predictor.logits(x)
        # Extreme inputs can overflow to inf/NaN; those rows get an error, never a NaN "probability".
        finite = np.all([np.isfinite(v.detach().float().numpy().reshape(len(v), -1)).all(1) for v in logits.values()],
                        axis=0).tolist()
        decoded = self.predictor.decode_logits(logits, x)  # x: each row's group, for group thresholds
        k_wanted = max(job.top_k or DEFAULT_TOP_K for job in jobs)
        per_output = {name: self._rows(entry, k_wanted) for name, entry in decoded.items()}
        single = per_output[self.output_names[0]] if len(per_output) == 1 else None
        results, start = [], 0
        for job in jobs:
            stop = start + job.rows
            if not all(finite[start:stop]):
                bad = [i for i in range(job.rows) if not finite[start + i]]
                results.append(PredictError(f"record(s) {bad[:10]} make the model output inf or NaN",
                                            hint="check those records for extreme values"))
                start = stop
                continue
            k = job.top_k or DEFAULT_TOP_K
            if single is not None:  # one output: its rows as they are (each row's dict belongs to one job alone)
                rows = [_cut(row, k) for row in single[start:stop]] if k < k_wanted else single[start:stop]
            else:
                rows = []
                for i in range(start, stop):
                    outputs = {name: _cut(values[i], k) for name, values in per_output.items()}
                    first = dict(outputs[self.output_names[0]])
                    first["outputs"] = outputs
                    rows.append(first)
            results.append(rows)
            start = stop
        return results

    @staticmethod
    def _rows(entry: dict, k: int) -> list[dict]:
        """Per row of one output: label/value, its probability and the top-k classes (one topk call per batch)."""
        predictions = entry["predictions"].tolist()
        if "probabilities" not in entry:
            return [{"value": float(v)} for v in predictions]
        probs: torch.Tensor = entry["probabilities"]  # (n, classes)
        labels = entry["labels"]
        top_p, top_i = probs.topk(min(k, probs.shape[1]), dim=1)
        index = {label: i for i, label in enumerate(labels)}
        chosen = probs.gather(1, torch.tensor([[index[p]] for p in predictions], dtype=torch.long)).squeeze(1)
        rows = []
        for label, p, tp, ti in zip(predictions, chosen.tolist(), top_p.tolist(), top_i.tolist()):
            rows.append({"label": str(label), "probability": p,
                         "top_k": [{"label": labels[j], "probability": q} for q, j in zip(tp, ti)]})
        return rows

    # -- warm-up -----------------------------------------------------------------------------------------
    def sample_job(self) -> Records:
        """One plausible row built from the signature (for warm-up, and the web page's defaults)."""
        columns = {name: [self.kinds[name].sample(sig)] for name, sig in self.signature["inputs"].items()}
        return Records(columns, 1)

    def warm_up(self, rounds: int = 3) -> None:
        """Run the first forward passes before taking traffic (allocator and kernel selection happen there)."""
        for _ in range(rounds):
            result = self.run([self.sample_job()])
            if isinstance(result[0], Exception):
                raise result[0]


def _cut(row: dict, k: int) -> dict:
    if "top_k" in row and len(row["top_k"]) > k:
        return {**row, "top_k": row["top_k"][:k]}
    return row
