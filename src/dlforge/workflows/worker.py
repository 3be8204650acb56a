"""One process of a data-parallel job: `python -m dlforge.workflows.worker SPEC` (what `dlforge train --nproc`
starts through torch.distributed.run) and `ray_worker(spec)` (what Ray Train's TorchTrainer runs).

Both call `dlforge.train` with the spec the launcher resolved (recipe, overrides, --out, --resume); joining the
process group and writing only on rank 0 happen inside it (training/distributed.py), so the single-process path
and the data-parallel one are the same code. A `probe` spec times a few training steps instead (--nproc auto).

A DlforgeError is written to torch elastic's error file (TORCHELASTIC_ERROR_FILE) and the process exits 2, so
the launcher names the failed rank with the error's own message; an unexpected exception keeps its traceback.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
import tempfile
from pathlib import Path

from dlforge.core.errors import DlforgeError


def run(spec: dict):
    """Train (or, with spec["probe"], time steps) in this process as one rank of the job."""
    import torch

    from dlforge.training import distributed

    threads = spec.get("threads")
    if threads:
        torch.set_num_threads(int(threads))
    process = distributed.init()
    try:
        if spec.get("probe"):
            return probe(spec, process)
        from dlforge.training.stop import StopRequest
        from dlforge.workflows.train import train

        stop = StopRequest()
        with stop_on_signals(stop):
            result = train(spec.get("recipe"), out=spec.get("out"), overrides=spec.get("overrides") or [],
                           resume=spec.get("resume"), progress=not spec.get("quiet", False), stop=stop)
        return {"rank": process.rank, "run_dir": str(result.run_dir)}
    finally:
        distributed.shutdown()


@contextlib.contextmanager
def stop_on_signals(stop):
    """SIGINT/SIGTERM set `stop`: training then stops after the step all processes agree on, rank 0 writes a fresh
    checkpoint, and the worker exits 130. torch elastic starts each worker in its own session, so a Ctrl-C reaches
    the launcher, which forwards it to every worker once (and kills those still running 30 s later)."""
    if threading.current_thread() is not threading.main_thread():  # a Ray Train worker thread: Ray owns signals
        yield
        return
    previous = {sig: signal.signal(sig, lambda signum, frame: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def probe(spec: dict, process) -> dict:
    """Seconds per training step of this recipe in this job (rank 0 writes them to spec["probe_file"])."""
    from dlforge.data import prepare, read_table
    from dlforge.recipe.io import load_recipe, recipe_base_dir
    from dlforge.training.setup import build_training

    recipe = load_recipe(spec.get("recipe"), spec.get("overrides") or [])
    recipe.training.compile = False  # a probe of a few steps would time the compiler
    table = read_table(recipe, recipe_base_dir(recipe))
    prepared = prepare(recipe, table=table)
    with tempfile.TemporaryDirectory(prefix="dlforge-probe-") as tmp:
        trainer = build_training(recipe, prepared, run_dir=Path(tmp)).trainer
        seconds = trainer.time_steps(int(spec["probe"]))
    timing = {"world_size": process.world_size, "step_seconds": seconds["wall"], "step_cpu_seconds": seconds["cpu"],
              "batch_size": trainer.batches.batch_size, "threads_per_process": torch_threads(),
              "strategy": recipe.training.strategy if process.distributed else "single_device",
              **memory_per_rank(trainer, process)}
    if process.is_main and spec.get("probe_file"):
        Path(spec["probe_file"]).write_text(json.dumps(timing), encoding="utf-8")
    return timing


def memory_per_rank(trainer, process) -> dict:
    """What each process holds after the timed steps: the bytes of its parameters, gradients and optimizer state
    (its shards under FSDP; exact, from the tensors) and its peak resident memory (ru_maxrss: the whole process,
    torch and the data included), one entry per rank."""
    import resource

    import torch

    local = trainer.state_io.local
    tensors = [p for p in trainer.model.parameters()]
    tensors += [p.grad for p in trainer.model.parameters() if p.grad is not None]
    tensors += [v for state in trainer.optimizer.state.values() for v in state.values() if torch.is_tensor(v)]
    state_bytes = sum(local(t).numel() * local(t).element_size() for t in tensors)
    mine = {"state_mb": state_bytes / 2**20, "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    every = [mine]
    if process.distributed:
        import torch.distributed as dist

        every = [None] * process.world_size
        dist.all_gather_object(every, mine)
    return {"state_mb_per_rank": [round(m["state_mb"], 2) for m in every],
            "max_rss_mb_per_rank": [round(m["max_rss_mb"], 1) for m in every]}


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def ray_worker(spec: dict) -> None:
    """Ray Train's `train_loop_per_worker`: Ray has created the process group; the same path as torchrun's."""
    run(spec)


def _record(exc: BaseException) -> None:
    """Put the error's one-line message in torch elastic's error file, where the launcher reads it per rank."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path:
        return
    text = exc.render() if isinstance(exc, DlforgeError) else f"{type(exc).__name__}: {exc}"
    payload = {"message": {"message": text, "extraInfo": {"py_callstack": "", "timestamp": "0"}}}
    try:
        Path(path).write_text(json.dumps(payload), encoding="utf-8")
    except OSError:
        pass


PEER_LOST = ("Connection reset by peer", "Connection closed by peer", "Broken pipe", "NCCL communicator was aborted",
             "ProcessGroupNCCL", "Socket Timeout", "connection closed")


def _peer_lost(exc: BaseException) -> bool:
    text = str(exc)
    return any(marker in text for marker in PEER_LOST)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    spec = json.loads(argv[0])
    try:
        run(spec)
    except DlforgeError as exc:
        _record(exc)
        print(f"error: {exc.render()}", file=sys.stderr)
        return exc.exit_code
    except RuntimeError as exc:
        if not _peer_lost(exc):
            _record(exc)
            raise
        # A collective failed because another rank died: that rank's failure is the story, not this traceback.
        lost = RuntimeError(f"another rank stopped while this one waited for it ({str(exc).splitlines()[0][:160]})")
        _record(lost)
        print(f"error: {lost}", file=sys.stderr)
        return 1
    except BaseException as exc:  # a crash: recorded for the launcher, traceback kept
        _record(exc)
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
