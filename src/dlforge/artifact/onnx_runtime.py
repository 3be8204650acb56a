"""The `onnx` runtime: the run's exported graph (model.onnx, written by `dlforge export`) on onnxruntime.

What it reads: `export.json` (beside model.json) says which inputs the graph takes in which order, which
outputs it gives, which image inputs it scales itself (the preprocessing moved into the graph: the Predictor
then hands it pixels 0..255) and which token inputs may have their trailing padding cut per chunk (the graph's
sequence axis is dynamic); it also records model.onnx's size and sha256, so a truncated, replaced or damaged
file is an ArtifactError before onnxruntime parses it.

Session options are chosen, not left to defaults (and `settings` states them, for the CLI and the server):
- intra-op threads: the caller's `threads`, else torch's thread count (so `--threads` and `OMP_NUM_THREADS`
  mean the same for both runtimes); inter-op threads 1 and sequential execution (these graphs are chains:
  parallel branches would only contend for the same cores);
- graph optimisation ORT_ENABLE_ALL (constant folding, Conv+BN/activation fusion, layout transforms);
- the CPU memory arena and memory-pattern planning on: after the first call of a shape, no allocation per call;
- onnxruntime's SkipLayerNormFusion off (DISABLED_OPTIMIZERS): on this project's CPU (AMD EPYC, AVX512,
  onnxruntime 1.32, 1 thread) the fused SkipLayerNormalization kernel took 0.66 ms on a 128 x 384 input, the
  Add + LayerNormalization it replaces 0.10 ms (benchmarks/compress.md);
- what a graph's export.json asks for besides (`ort_disabled_optimizers`, from GRAPH_OPTIMIZERS_OFF only): a static
  int8 graph whose first convolution stays fp32 (compress/input_layer.py) runs without QDQPropagationTransformer,
  which would otherwise move the first QuantizeLinear above the fp32 max-pool and make it a uint8 NCHW one, 4-8x
  slower than the fp32 one.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from dlforge.core.errors import ArtifactError, DlforgeError
from dlforge.data.batches import eval_batches

ONNX_FILE = "model.onnx"
DISABLED_OPTIMIZERS = ("SkipLayerNormFusion",)
# The optimizers a graph's export.json may turn off as well (`ort_disabled_optimizers`), and why.
GRAPH_OPTIMIZERS_OFF = {"QDQPropagationTransformer": "keeps an fp32 layer's max-pool before the first QuantizeLinear"}
GRAPH_OPTIMIZERS_KEY = "ort_disabled_optimizers"
EXPORT_JSON = "export.json"


def onnxruntime_module():
    """onnxruntime, or a DlforgeError naming the extra that installs it."""
    try:
        import onnxruntime
    except ImportError:
        raise DlforgeError("the onnx runtime needs onnxruntime", hint="pip install 'dlforge[onnx]'") from None
    return onnxruntime


def read_export_json(run_dir: Path) -> dict:
    """export.json of a run, or an ArtifactError that says how to make one (`dlforge export RUN`)."""
    run_dir = Path(run_dir)
    path, onnx_path = run_dir / EXPORT_JSON, run_dir / ONNX_FILE
    export_hint = f"export it first: dlforge export {run_dir} --format onnx"
    if not onnx_path.is_file():
        raise ArtifactError(f"this run has no {ONNX_FILE} for the onnx runtime", where=str(run_dir),
                            hint=f"{export_hint} (or use --runtime torch)")
    if not path.is_file():
        raise ArtifactError(f"{ONNX_FILE} has no {EXPORT_JSON} beside it (it was not written by dlforge export)",
                            where=str(run_dir), hint=export_hint)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{EXPORT_JSON} is not valid JSON ({exc.__class__.__name__})", where=str(path),
                            hint=export_hint) from None
    if not isinstance(record, dict) or not {"inputs", "outputs", "onnx"} <= set(record):
        raise ArtifactError(f"{EXPORT_JSON} is damaged (needs inputs, outputs and onnx)", where=str(path),
                            hint=export_hint)
    return record


def read_onnx_bytes(run_dir: Path, record: dict) -> bytes:
    """model.onnx's bytes, checked against the size and sha256 export.json recorded."""
    path = Path(run_dir) / ONNX_FILE
    hint = f"the ONNX file is damaged; export again: dlforge export {Path(run_dir)} --format onnx --overwrite"
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ArtifactError(f"{ONNX_FILE} cannot be read ({exc.__class__.__name__})", where=str(path), hint=hint) from None
    expected = record["onnx"]
    if len(data) != expected.get("bytes"):
        raise ArtifactError(f"{ONNX_FILE} has {len(data)} bytes; export.json recorded {expected.get('bytes')} (the "
                            "file is truncated or was replaced)", where=str(path), hint=hint)
    if hashlib.sha256(data).hexdigest() != expected.get("sha256"):
        raise ArtifactError(f"{ONNX_FILE} does not match the sha256 export.json recorded (the file is damaged or was "
                            "replaced)", where=str(path), hint=hint)
    return data


def graph_disabled_optimizers(record: dict | None, where: str) -> tuple[str, ...]:
    """The onnxruntime optimizers `record` (an export.json) asks to turn off for its graph, checked by name."""
    names = (record or {}).get(GRAPH_OPTIMIZERS_KEY) or []
    unknown = [n for n in names if n not in GRAPH_OPTIMIZERS_OFF] if isinstance(names, list) else [names]
    if unknown:
        raise ArtifactError(f"{EXPORT_JSON} asks to turn off onnxruntime optimizer(s) {unknown}; dlforge turns off only "
                            f"{sorted(GRAPH_OPTIMIZERS_OFF)} for a graph", where=where,
                            hint="quantize or export the run again with this dlforge version")
    return tuple(names)


def session_options(threads: int | None = None):
    """(SessionOptions, their description): the deliberate choices listed in this module's docstring."""
    ort = onnxruntime_module()
    threads = int(threads or torch.get_num_threads())
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.enable_cpu_mem_arena = True
    options.enable_mem_pattern = True
    options.log_severity_level = 3  # errors only: ORT's warnings about unused initialisers are not the user's business
    described = {"provider": "CPUExecutionProvider", "intra_op_threads": threads, "inter_op_threads": 1,
                 "execution_mode": "sequential", "graph_optimization": "ORT_ENABLE_ALL", "cpu_mem_arena": True,
                 "mem_pattern": True, "disabled_optimizers": list(DISABLED_OPTIMIZERS), "onnxruntime": ort.__version__}
    return options, described


def open_session(data: bytes, *, threads: int | None = None, where: str, record: dict | None = None):
    """An InferenceSession on `data` (whose export.json is `record`, when given: what it asks to turn off for this
    graph is turned off too); any failure to parse or initialise is an ArtifactError, never a crash."""
    ort = onnxruntime_module()
    options, described = session_options(threads)
    disabled = list(DISABLED_OPTIMIZERS) + list(graph_disabled_optimizers(record, where))
    described["disabled_optimizers"] = disabled
    try:
        session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"], disabled_optimizers=disabled)
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/InvalidProtobuf (and RuntimeError)
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        raise ArtifactError(f"onnxruntime cannot load {ONNX_FILE} ({exc.__class__.__name__}: {first})", where=where,
                            hint=f"export again: dlforge export {Path(where).parent} --format onnx --overwrite") from None
    return session, described


class OnnxRuntime:
    """A run's model.onnx on onnxruntime's CPU provider: same inputs and outputs as TorchRuntime."""

    name = "onnx"

    def __init__(self, run_dir: Path, *, batch_size: int, threads: int | None = None, record: dict | None = None,
                 data: bytes | None = None):
        """`record` and `data` (export.json's content and the graph's bytes) are given by the export itself,
        which checks a graph before writing it; otherwise both are read from `run_dir` and checked."""
        self.run_dir = Path(run_dir)
        self.record = record if record is not None else read_export_json(self.run_dir)
        data = data if data is not None else read_onnx_bytes(self.run_dir, self.record)
        self.session, self.settings = open_session(data, threads=threads, where=str(self.run_dir / ONNX_FILE),
                                                   record=self.record)
        self.input_names = [i["name"] for i in self.record["inputs"]]
        self.dtypes = {i["name"]: np.dtype(i["dtype"]) for i in self.record["inputs"]}
        self.output_names = list(self.record["outputs"])
        graph_inputs = [i.name for i in self.session.get_inputs()]
        if graph_inputs != self.input_names:
            raise ArtifactError(f"{ONNX_FILE} takes inputs {graph_inputs}; export.json says {self.input_names}",
                                where=str(self.run_dir / ONNX_FILE), hint=f"export again: dlforge export {self.run_dir}")
        # Image inputs whose scaling the graph does itself: the Predictor hands them pixels 0..255.
        self.unscaled_inputs = tuple(self.record.get("scaled_in_graph", ()))
        self.trim = {name: int(pad) for name, pad in self.record.get("trim_padding", {}).items()}
        self.batch_size = batch_size
        self.settings = {**self.settings, "file": ONNX_FILE, "bytes": self.record["onnx"]["bytes"],
                         "opset": self.record.get("opset"), "quantization": self.record.get("quantization")}

    def feed(self, x: dict, rows) -> dict[str, np.ndarray]:
        """The session's inputs for `rows` of `x`, as numpy arrays of the graph's dtypes (padding columns cut)."""
        feed = {}
        for name in self.input_names:
            value = x[name][rows]
            value = value.numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
            feed[name] = np.ascontiguousarray(value, dtype=self.dtypes[name])
        for name, pad in self.trim.items():  # cut the padding columns no row of this chunk uses
            ids = feed[name]
            used = (ids != pad).any(0).nonzero()[0]
            feed[name] = np.ascontiguousarray(ids[:, :max(1, int(used[-1]) + 1 if len(used) else 1)])
        return feed

    def run(self, x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        n = len(next(iter(x.values())))
        chunks: dict[str, list] = {name: [] for name in self.output_names}
        for rows in eval_batches(n, self.batch_size):
            try:
                values = self.session.run(self.output_names, self.feed(x, rows))
            except Exception as exc:  # a shape the graph cannot take: an error, not a crashed process
                first = (str(exc).strip().splitlines() or [""])[0][:300]
                raise DlforgeError(f"onnxruntime failed to run the model ({exc.__class__.__name__}: {first})",
                                   where=str(self.run_dir / ONNX_FILE)) from None
            for name, value in zip(self.output_names, values):
                chunks[name].append(torch.from_numpy(np.asarray(value, dtype=np.float32)))
        if n == 0:
            return {name: torch.empty(0) for name in self.output_names}
        return {name: torch.cat(parts) for name, parts in chunks.items()}


def onnx_runtime(*, model: torch.nn.Module, run_dir: Path, batch_size: int, threads: int | None = None) -> OnnxRuntime:
    return OnnxRuntime(run_dir, batch_size=batch_size, threads=threads)


__all__ = ["EXPORT_JSON", "GRAPH_OPTIMIZERS_KEY", "GRAPH_OPTIMIZERS_OFF", "ONNX_FILE", "OnnxRuntime", "onnx_runtime", "open_session", "read_export_json",
           "read_onnx_bytes", "session_options"]
