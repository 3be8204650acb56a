"""Start a data-parallel training job: `dlforge train RECIPE --nproc N|auto [--nnodes M --node-rank R
--rdzv-endpoint host:port]` through torch.distributed.run, or `--ray-address auto|local` through Ray Train.

What happens here, in the launching process, before any worker starts (so that bad input fails once, with one
message and exit 2, instead of once per rank): the recipe is loaded and checked, the strategy is checked
(training/distributed.py check_strategy), the run directory is chosen (and an --overwrite'd one cleared), the
threads per process are set (cores // processes, stated), an --nproc above the core count is warned about, and
a rendezvous port already in use is refused. Then the workers (workflows/worker.py) run `dlforge.train`; rank 0
writes the run directory. A rank that dies fails the job with the rank named and its message; the last
checkpoint, written atomically by rank 0, stays intact and resumes on any process count.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from dlforge.core.errors import DlforgeError, TrainingInterrupted
from dlforge.recipe.io import load_recipe
from dlforge.training.checkpoint import CHECKPOINT_DIR, STATE_FILE
from dlforge.training.distributed import Process, check_recipe, process_device
from dlforge.workflows.train import RunResult, choose_run_dir, refuse_data_file

PROBE_STEPS = 5


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@dataclass
class Plan:
    """What the launcher decided, stated to the user before training: processes, threads, why."""

    nproc: int
    threads: int
    lines: list[str]


def threads_per_process(nproc: int, cores: int | None = None) -> int:
    cores = cores or available_cores()
    return max(1, cores // nproc)


def plan_processes(nproc: int, *, cores: int | None = None, gpus: int | None = None) -> Plan:
    """Threads per process (cores // nproc, at least 1) and a warning when processes outnumber the cores."""
    cores = cores or available_cores()
    gpus = gpus if gpus is not None else _gpu_count()
    threads = threads_per_process(nproc, cores)
    lines = [f"{nproc} process(es) on this machine, {threads} torch thread(s) each ({cores} cores / {nproc})"]
    if nproc > cores and not gpus:
        lines.append(f"warning: --nproc {nproc} is more than the {cores} CPU core(s) here: the processes share cores, "
                     "so each step waits for the slowest and the job runs slower than with fewer; it still runs")
    elif gpus and nproc > gpus:
        lines.append(f"warning: --nproc {nproc} is more than the {gpus} GPU(s) here: processes share GPUs")
    return Plan(nproc, threads, lines)


def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def parse_endpoint(endpoint: str) -> tuple[str, int]:
    host, sep, port = endpoint.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise DlforgeError(f"--rdzv-endpoint must be host:port, got {endpoint!r}", where="--rdzv-endpoint",
                           hint="e.g. --rdzv-endpoint 10.0.0.1:29400 (the address of node 0 and a free port)")
    return host, int(port)


def check_port_free(host: str, port: int) -> None:
    """Node 0 hosts the rendezvous store on `port`: a port already in use would make it wait or fail obscurely."""
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("", port))
        except OSError as exc:
            raise DlforgeError(f"rendezvous port {port} is already in use on this machine ({exc.strerror})",
                               where="--rdzv-endpoint",
                               hint=f"choose another port (--rdzv-endpoint {host}:{port + 1}), or stop the program "
                                    f"holding {port} (`ss -ltnp | grep {port}`)") from None


@dataclass
class Job:
    """A resolved training job: the spec every worker gets, and the run directory rank 0 writes."""

    spec: dict
    run_dir: Path
    recipe: object


def resolve_job(recipe, *, out=None, overrides=None, resume=None, overwrite: bool = False, quiet: bool = False,
                node_rank: int = 0) -> Job:
    """Load and check the recipe, choose (and clear, with --overwrite) the run directory: once, here."""
    overrides = list(overrides or [])
    if resume is not None:
        run_dir = Path(resume)
        if not (run_dir / "recipe.yaml").is_file():
            raise DlforgeError("no run to resume here (no recipe.yaml)", where=str(run_dir),
                               hint="give the run directory that `dlforge train --out` wrote")
        loaded = load_recipe(run_dir / "recipe.yaml")
        spec = {"recipe": None, "resume": str(run_dir), "overrides": [], "out": None}
    else:
        refuse_data_file(recipe)
        loaded = load_recipe(recipe, overrides)
        if node_rank == 0:
            run_dir = choose_run_dir(loaded, out, overwrite)
        elif out is None:
            raise DlforgeError("every node needs the run directory named (rank 0 writes it)", where="--out",
                               hint="pass the same --out on every node")
        else:
            run_dir = Path(out)
        source = str(recipe) if isinstance(recipe, (str, Path)) else recipe
        spec = {"recipe": source, "resume": None, "overrides": overrides, "out": str(run_dir)}
    spec["quiet"] = quiet
    check_recipe(loaded, process_device(Process()))
    return Job(spec, run_dir, loaded)


def torchrun_args(spec: dict, *, nproc: int, nnodes: int = 1, node_rank: int = 0,
                  rdzv_endpoint: str | None = None) -> list[str]:
    """torch.distributed.run's arguments: standalone (a free local port) on one node, else a static rendezvous at
    the endpoint (node 0 hosts the store there; --node-rank is this node's place)."""
    args = ["--nnodes", str(nnodes), "--nproc-per-node", str(nproc), "--max-restarts", "0"]
    if rdzv_endpoint is None:
        if nnodes > 1:
            raise DlforgeError("several nodes need a rendezvous endpoint", where="--rdzv-endpoint",
                               hint="pass --rdzv-endpoint HOST:PORT of node 0 on every node")
        args.append("--standalone")
    else:
        host, port = parse_endpoint(rdzv_endpoint)
        args += ["--rdzv-backend", "static", "--master-addr", host, "--master-port", str(port),
                 "--node-rank", str(node_rank)]
    return [*args, "-m", "dlforge.workflows.worker", json.dumps(spec)]


@contextlib.contextmanager
def _environment(threads: int):
    """OMP_NUM_THREADS for the workers (torch reads it at start), restored after; torch elastic's chatter off."""
    saved = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = str(threads)
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = saved


def _run_torchrun(argv: list[str], *, run_dir: Path | None, nproc: int, nnodes: int) -> None:
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.run import get_args_parser, run

    try:
        run(get_args_parser().parse_args(argv))
    except ChildFailedError as exc:
        raise rank_failure(exc, run_dir=run_dir, nproc=nproc, nnodes=nnodes) from None
    except SignalException as exc:
        if run_dir is not None:
            raise TrainingInterrupted(str(run_dir)) from None
        raise DlforgeError(f"interrupted ({exc.sigval.name})") from None


def _failure_line(failure) -> str:
    message = failure.message
    if isinstance(message, dict):  # torch elastic's error-file payload
        message = message.get("message", "")
    message = str(message or "").strip()
    if not message or message.startswith("To enable traceback"):
        return "no message (see its output above)"
    return message.splitlines()[0][:300]


def rank_failure(exc, *, run_dir: Path | None, nproc: int, nnodes: int) -> DlforgeError:
    """One message for a failed job: the rank(s) that failed by themselves (exit code, their own message), then
    those the launcher stopped after them, and whether a checkpoint is there to resume."""
    failures = getattr(exc, "failures", {}) or {}
    stopped = {r for r, f in failures.items() if f.exitcode in (-15, -9) or "another rank" in _failure_line(f)}
    causes = [r for r in sorted(failures) if r not in stopped] or sorted(failures)
    parts = []
    for rank in causes:
        failure = failures[rank]
        code = failure.exitcode
        how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        parts.append(f"rank {rank} (local rank {failure.local_rank}, pid {failure.pid}) failed, {how}: "
                     f"{_failure_line(failure)}")
    others = sorted(set(failures) - set(causes))
    if others:
        parts.append(f"then rank(s) {', '.join(map(str, others))} were stopped")
    text = "; ".join(parts) or f"the job failed: {str(exc)[:300]}"
    where = str(run_dir) if run_dir is not None else None
    if run_dir is not None and (Path(run_dir) / CHECKPOINT_DIR / STATE_FILE).is_file():
        flags = f" --nproc {nproc}" + (f" --nnodes {nnodes} ..." if nnodes > 1 else "")
        hint = (f"the last checkpoint in {Path(run_dir) / CHECKPOINT_DIR} is intact (written atomically by rank 0); "
                f"fix the cause and resume on any process count: dlforge train --resume {run_dir}{flags}")
    elif run_dir is not None:
        hint = f"no checkpoint was written yet; fix the cause and train again with --out {run_dir} --overwrite"
    else:
        hint = None
    return DlforgeError(text, where=where, hint=hint)


def probe(job: Job, nproc: int, *, threads: int, steps: int = PROBE_STEPS) -> dict:
    """Seconds per step of this recipe with `nproc` processes (same global batch), measured in a short job."""
    with tempfile.TemporaryDirectory(prefix="dlforge-auto-") as tmp:
        spec = {**job.spec, "probe": steps, "probe_file": str(Path(tmp) / "probe.json"), "threads": threads}
        with _environment(threads):
            _run_torchrun(torchrun_args(spec, nproc=nproc), run_dir=None, nproc=nproc, nnodes=1)
        return json.loads((Path(tmp) / "probe.json").read_text(encoding="utf-8"))


def choose_nproc(job: Job, *, cores: int | None = None, gpus: int | None = None, say=print) -> int:
    """--nproc auto: one short timed job with 1 process and one with N (GPUs, else cores); the faster wins."""
    cores = cores or available_cores()
    gpus = gpus if gpus is not None else _gpu_count()
    many = gpus or cores
    if many < 2:
        say(f"--nproc auto: 1 process (this machine has {cores} core(s) and {gpus} GPU(s): nothing to split)")
        return 1
    one = probe(job, 1, threads=threads_per_process(1, cores))
    several = probe(job, many, threads=threads_per_process(many, cores))
    batch = one["batch_size"]
    t1, tn = one["step_seconds"], several["step_seconds"]
    pick = many if tn < t1 else 1
    why = (f"{many} processes x {several.get('threads_per_process', '?')} thread(s) take {tn * 1e3:.1f} ms a step "
           f"against {t1 * 1e3:.1f} ms for 1 process x {one.get('threads_per_process', '?')} thread(s) (the same "
           f"global batch of {batch} rows; {batch / tn:.0f} vs {batch / t1:.0f} rows/s, {PROBE_STEPS} timed steps "
           "each, measured now: a busy machine changes the answer)")
    if pick == 1:
        why += ": splitting does not pay here (on one CPU the processes share the cores and add an all-reduce "
        why += "per step)" if not gpus else ")"
    say(f"--nproc auto: {pick} process(es): {why}")
    return pick


def launch_torchrun(recipe=None, *, nproc: int | str = 1, nnodes: int = 1, node_rank: int = 0,
                    rdzv_endpoint: str | None = None, out=None, overrides=None, resume=None, overwrite: bool = False,
                    quiet: bool = False, say=None) -> RunResult:
    """`dlforge train --nproc ...`: resolve once, then torch.distributed.run the workers; rank 0 writes the run."""
    say = say or (lambda text: print(text, file=sys.stderr))
    if nnodes < 1 or not 0 <= node_rank < nnodes:
        raise DlforgeError(f"--node-rank {node_rank} must be in 0..{nnodes - 1} (--nnodes {nnodes})",
                           where="--node-rank", hint="number the nodes 0, 1, ... with node 0 at --rdzv-endpoint")
    job = resolve_job(recipe, out=out, overrides=overrides, resume=resume, overwrite=overwrite, quiet=quiet,
                      node_rank=node_rank)
    if rdzv_endpoint is not None:
        host, port = parse_endpoint(rdzv_endpoint)
        if node_rank == 0:
            check_port_free(host, port)
    if nproc == "auto":
        nproc = choose_nproc(job, say=say)
    nproc = int(nproc)
    if nproc < 1:
        raise DlforgeError(f"--nproc must be at least 1 or auto, got {nproc}", where="--nproc")
    plan = plan_processes(nproc)
    for line in plan.lines:
        say(line)
    job.spec["threads"] = plan.threads
    with _environment(plan.threads):
        _run_torchrun(torchrun_args(job.spec, nproc=nproc, nnodes=nnodes, node_rank=node_rank,
                                    rdzv_endpoint=rdzv_endpoint), run_dir=job.run_dir, nproc=nproc, nnodes=nnodes)
    return finished_run(job.run_dir)


def finished_run(run_dir: Path) -> RunResult:
    """What rank 0 wrote, read back for the launcher's summary (on another node than rank 0's: nothing)."""
    metrics_path = Path(run_dir) / "metrics.json"
    metrics = json.loads(metrics_path.read_text(encoding="utf-8")) if metrics_path.is_file() else {}
    return RunResult(Path(run_dir), metrics, [])


def launch_ray(recipe=None, *, address: str = "auto", workers: int = 2, out=None, overrides=None, resume=None,
               overwrite: bool = False, quiet: bool = False, say=None) -> RunResult:
    """`dlforge train --ray-address auto|local|ray://...`: the same workers through Ray Train's TorchTrainer.

    `local` starts a Ray on this machine for the job (and stops it after); `auto` joins the running cluster.
    Ray creates the process group (gloo on CPU, NCCL with GPUs); the workers find it (training/distributed.py).
    The run directory must be on storage every worker's node sees (rank 0 writes it).
    """
    say = say or (lambda text: print(text, file=sys.stderr))
    try:
        import ray
        from ray.train import RunConfig, ScalingConfig
        from ray.train.torch import TorchTrainer
    except ImportError:
        raise DlforgeError("--ray-address needs Ray Train, which is not installed",
                           hint="pip install 'dlforge[ray]'") from None
    if workers < 1:
        raise DlforgeError(f"--nproc must be at least 1 with --ray-address, got {workers}", where="--nproc")
    job = resolve_job(recipe, out=out, overrides=overrides, resume=resume, overwrite=overwrite, quiet=quiet)
    absolute_paths(job)
    started_here = False
    if not ray.is_initialized():
        cores = available_cores()
        if address == "local":
            ray.init(num_cpus=max(cores, workers), include_dashboard=False, log_to_driver=not quiet)
        else:
            ray.init(address=address, log_to_driver=not quiet)
        started_here = True
    use_gpu = bool(_gpu_count())
    threads = threads_per_process(workers) if address == "local" else None
    job.spec["threads"] = threads
    say(f"Ray Train: {workers} worker(s) at {address}" + (f", {threads} torch thread(s) each" if threads else ""))
    with tempfile.TemporaryDirectory(prefix="dlforge-ray-") as storage:
        trainer = TorchTrainer(
            _ray_entry, train_loop_config=job.spec,
            scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu,
                                         resources_per_worker={"CPU": 1}),
            run_config=RunConfig(storage_path=storage, name="dlforge"))
        try:
            trainer.fit()
        except Exception as exc:  # Ray's TrainingFailedError wraps the worker's exception
            raise ray_failure(exc, job.run_dir, workers) from None
        finally:
            if started_here:
                ray.shutdown()
    return finished_run(job.run_dir)


def absolute_paths(job: Job) -> None:
    """Ray's workers start in a directory of Ray's own: every path they read (the recipe file, --out, --resume,
    the run directory) is made absolute in the job's spec first."""
    spec = job.spec
    spec["run_dir"] = str(Path(job.run_dir).resolve())
    if isinstance(spec.get("recipe"), str) and Path(spec["recipe"]).exists():
        spec["recipe"] = str(Path(spec["recipe"]).resolve())
    for key in ("out", "resume"):
        if spec.get(key):
            spec[key] = str(Path(spec[key]).resolve())


def _ray_entry(config: dict) -> None:
    from dlforge.workflows.worker import ray_worker

    ray_worker(config)


def ray_failure(exc: Exception, run_dir: Path, workers: int) -> DlforgeError:
    text = str(exc).strip()
    for line in text.splitlines():  # the worker's own error line (a DlforgeError's message), if Ray kept it
        if "DlforgeError" in line or "hint:" in line:
            text = line.strip()
            break
    has_checkpoint = (Path(run_dir) / CHECKPOINT_DIR / STATE_FILE).is_file()
    hint = (f"the last checkpoint is intact; resume: dlforge train --resume {run_dir} --ray-address local --nproc "
            f"{workers}" if has_checkpoint else None)
    return DlforgeError(f"the Ray Train job failed: {text.splitlines()[0][:400] if text else type(exc).__name__}",
                        where=str(run_dir), hint=hint)


__all__ = ["Plan", "available_cores", "check_port_free", "choose_nproc", "launch_ray", "launch_torchrun",
           "plan_processes", "rank_failure", "resolve_job", "threads_per_process", "torchrun_args"]
