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


def echo_runtime(run: Path, runtime: Optional[str]) -> None:
    """On stderr, which runtime ran the model and, for onnx, its session options."""
    from dlforge.artifact.runtimes import default_runtime

    name = runtime or default_runtime(run)
    if name == "onnx":
        from dlforge.artifact.onnx_runtime import session_options

        _, s = session_options()
        echo_err(f"runtime onnx: onnxruntime {s['onnxruntime']}, {s['intra_op_threads']} intra-op thread(s), "
                  f"{s['inter_op_threads']} inter-op, {s['graph_optimization']}, CPU arena on")


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
