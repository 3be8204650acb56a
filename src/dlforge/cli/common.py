"""What the command families share: stderr lines, the one-line metrics summary, the runtime line, signals."""

from __future__ import annotations

import contextlib
import signal
import threading
from pathlib import Path
from typing import Optional

import typer


def echo_err(text: str) -> None:
    typer.echo(text, err=True)


def metrics_line(metrics: dict) -> str:
    keys = ("accuracy", "f1", "micro_f1", "macro_f1", "roc_auc", "pr_auc", "mae", "rmse", "r2", "hr@10", "ndcg@10",
            "recall@50", "mrr", "coverage@10", "loss")
    parts = [f"{k} {metrics[k]:.4f}" for k in keys if isinstance(metrics.get(k), (int, float))]
    for name, value in metrics.items():
        if isinstance(value, dict) and name not in ("per_class",):
            parts += [f"{name}.{k} {value[k]:.4f}" for k in keys if isinstance(value.get(k), (int, float))]
    return "  ".join(parts)


def echo_runtime(run: Path, runtime: Optional[str], settings: Optional[dict] = None) -> None:
    """On stderr, which runtime ran the model: for onnx its session options; for torch (given the runtime's
    `settings`) whether the lean graph or the module ran, and why."""
    from dlforge.artifact.runtimes import default_runtime

    name = runtime or default_runtime(run)
    if name == "onnx":
        from dlforge.artifact.onnx_runtime import session_options

        _, s = session_options()
        echo_err(f"runtime onnx: onnxruntime {s['onnxruntime']}, {s['intra_op_threads']} intra-op thread(s), "
                  f"{s['inter_op_threads']} inter-op, {s['graph_optimization']}, CPU arena on")
    elif name == "torch" and settings:
        echo_err(f"runtime torch: {torch_path_line(settings)}")


def torch_path_line(settings: dict) -> str:
    """The torch runtime's forward path in words: "lean graph (11 ops, 0 batch norms folded)" or "module (why)"."""
    lean = settings.get("lean")
    if settings.get("path") == "lean" and lean:
        line = (f"lean graph ({lean['ops']} ops, {lean['batch_norms_folded']} batch norm(s) folded"
                + (f", modules kept: {', '.join(lean['modules_kept'])}" if lean["modules_kept"] else "") + ")")
    else:
        line = "module"
    reason = settings.get("reason")
    return line + (f"; {reason}" if reason else "") + f", {settings.get('torch_threads')} thread(s)"


@contextlib.contextmanager
def signals_request(stop):
    """Ctrl-C / SIGTERM set `stop` (training checkpoints after the current step); a second one stops now.

    Only the command owns the process's signals: the library never installs a handler. The previous
    handlers come back when training ends.
    """

    def handle(signum, frame):
        if stop.is_set():  # a second Ctrl-C means "now"
            raise KeyboardInterrupt
        stop.set()

    if threading.current_thread() is not threading.main_thread():  # signal.signal works in the main thread only
        yield
        return
    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
