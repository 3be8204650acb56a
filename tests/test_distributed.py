"""Data-parallel training (training/distributed.py, data/batches.py ShardedBatches, workflows/launch.py).

Two gloo processes on tiny data: the same batches as one process (every row once per epoch across ranks),
identical weights on every rank and the single-process weights within float tolerance, rank 0 alone writing,
resume across process counts, a dying rank named with the checkpoint intact, and the launcher's refusals.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from conftest import tabular_recipe
from dlforge.core.errors import DlforgeError
from dlforge.data.batches import InMemoryBatches, ShardedBatches

SRC = Path(__file__).resolve().parents[1] / "src"

# A callback loaded into the workers through sitecustomize.py (and registered in the test process too, for the
# in-process resume): rank `rank` does `action` at `step` of epoch `epoch`; every other step takes `pause` seconds.
INJECTED = '''
import os, signal, time
from dlforge.training.callbacks import callbacks

class {cls}:
    def __init__(self, rank=1, epoch=1, step={step}, pause={pause}):
        self.rank, self.epoch, self.step, self.pause, self.current = rank, epoch, step, pause, None
    def on_epoch_start(self, trainer, epoch):
        self.current = epoch
    def on_step_end(self, trainer, step):
        from dlforge.training.distributed import current
        if current().rank == self.rank and self.current == self.epoch and step == self.step:
            {action}
        time.sleep(self.pause)

if "{name}" not in callbacks:
    callbacks.register("{name}")({cls})
'''

# The fault injected in test_a_dying_rank_*: the rank exits (code 3), as a process killed by the OOM killer or a
# lost node would.
DIE_ON_RANK = INJECTED.format(cls="DieOnRank", name="die_on_rank", step=0, pause=0.0, action="os._exit(3)")

# A real Ctrl-C through the launcher: the rank sends SIGINT to its parent (the `dlforge train --nproc` process,
# which forwards it to every worker); every step takes `pause` seconds (from the start: the ranks agree on how many
# steps make ~50 ms between stop checks), so the signal lands inside that epoch.
SIGNAL_LAUNCHER = INJECTED.format(cls="SignalLauncher", name="signal_launcher", step=1, pause=0.4,
                                  action="os.kill(os.getppid(), signal.SIGINT)")


def recipe_for(csv: Path, **training) -> dict:
    recipe = tabular_recipe(csv)
    recipe["training"] = {"epochs": 3, "batch_size": 25, "optimizer": {"name": "adam", "lr": 0.01},
                          "baseline": False, **training}
    return recipe


def train_with_injected(source: str, name: str, csv: Path, tmp_path: Path, run: Path) -> subprocess.CompletedProcess:
    """`dlforge train --nproc 2` on the tiny recipe with the injected callback `name` (defined by `source`, loaded
    into the workers through sitecustomize.py) acting on rank 1 at step 1 of epoch 2, each step 0.3 s."""
    inject = tmp_path / "inject"
    inject.mkdir()
    (inject / "sitecustomize.py").write_text(source)
    exec(compile(source, name, "exec"), {})  # registered here too, for the in-process resume
    recipe = recipe_for(csv, callbacks=[{"name": name, "rank": 1, "epoch": 1, "step": 1, "pause": 0.3}])
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(inject), str(SRC)]), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "dlforge.cli", "train", str(path), "--nproc", "2", "--out", str(run),
                           "-q"], env=env, capture_output=True, text=True, timeout=240)


class SaveWeights:
    """Writes the trained weights of this process when fitting ends."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def on_fit_end(self, trainer, result):
        state = trainer.model_state()  # under FSDP gathered: every rank takes part, rank 0 receives the weights
        if state:
            torch.save({k: v.detach().cpu() for k, v in state.items()}, self.path)


class StopAt:
    """Requests a stop after `step` of `epoch` (both ranks at the same step, as Ctrl-C through the launcher)."""

    def __init__(self, epoch: int, step: int):
        self.epoch, self.step, self.current = epoch, step, None

    def on_epoch_start(self, trainer, epoch):
        self.current = epoch

    def on_step_end(self, trainer, step):
        if self.current == self.epoch and step == self.step:
            trainer.stop.set()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rank(rank: int, world: int, port: int, job: dict) -> None:
    """One spawned gloo process: torchrun's environment, then `dlforge.train` as the worker runs it."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    import dlforge
    from dlforge.core.errors import TrainingInterrupted
    from dlforge.training import distributed

    if job.get("stop_on_rank"):  # the ranks agree on a stop at every step (not every ~20 ms): a stop step to assert
        distributed.AgreedStop.CHECK_SECONDS = 0.0
    callbacks = [SaveWeights(Path(job["weights"]) / f"rank{rank}.pt")]
    if job.get("stop_at"):
        callbacks.append(StopAt(*job["stop_at"]))
    if job.get("stop_on_rank"):
        callbacks.append(StopOnRank(*job["stop_on_rank"]))
        callbacks.append(ShardReport(Path(job["weights"]) / f"shards{rank}.json"))
    try:
        if job.get("stop_then_resume"):  # stopped (a fresh checkpoint), a copy kept for the test, resumed here
            try:
                dlforge.train(job["recipe"], out=job["outs"][rank], callbacks=callbacks, progress=False)
            except TrainingInterrupted:
                pass
            if rank == 0:
                import shutil

                shutil.copytree(job["outs"][0], job["stop_then_resume"])
            torch.distributed.barrier()  # rank 0 has written the checkpoint: both resume the run it wrote
            dlforge.train(resume=job["outs"][0], callbacks=callbacks, progress=False)
        elif job.get("resume"):  # one run directory per rank: a rank other than 0 must leave its copy untouched
            dlforge.train(resume=job["resume"][rank], callbacks=callbacks, progress=False)
        else:
            dlforge.train(job["recipe"], out=job["outs"][rank], callbacks=callbacks, progress=False)
    except TrainingInterrupted:
        pass
    finally:
        distributed.shutdown()


def spawn(job: dict, world: int = 2) -> None:
    torch.multiprocessing.spawn(_rank, args=(world, free_port(), job), nprocs=world, join=True)


def load(path: Path) -> dict:
    return torch.load(path, weights_only=True)


def assert_close(a: dict, b: dict, atol: float = 1e-5) -> None:
    assert a.keys() == b.keys()
    worst = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    assert worst <= atol, f"largest weight difference {worst:.3g} > {atol}"


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """The reference: the tiny recipe trained in one process (weights and run directory)."""
    import dlforge

    tmp = tmp_path_factory.mktemp("single")
    csv = _tiny_csv(tmp)
    dlforge.train(recipe_for(csv), out=tmp / "run", callbacks=[SaveWeights(tmp / "weights.pt")], progress=False)
    return {"csv": csv, "weights": load(tmp / "weights.pt"), "run": tmp / "run", "tmp": tmp}


def _tiny_csv(folder: Path) -> Path:
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    n = 200
    x1, x2 = rng.normal(size=n), rng.normal(size=n)
    color = rng.choice(["red", "green", "blue"], size=n)
    flag = rng.choice(["yes", "no"], size=n)
    score = x1 + 0.5 * x2 + (color == "red") * 1.0 + (flag == "yes") * 0.5
    frame = pd.DataFrame({"x1": x1, "x2": x2, "color": color, "flag": flag,
                          "target": np.where(score > 0.5, "good", "bad")})
    path = folder / "tiny.csv"
    frame.to_csv(path, index=False)
    return path


# ---------------------------------------------------------------- sharding (no processes)
@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("lengths", [False, True])
def test_shards_hold_every_row_once_per_epoch_in_the_single_process_order(world, lengths):
    n, batch = 103, 10
    lens = torch.randint(1, 50, (n,)) if lengths else None
    single = InMemoryBatches(n, batch, seed=7, lengths=lens)
    shards = [ShardedBatches(InMemoryBatches(n, batch, seed=7, lengths=lens), rank=r, world_size=world)
              for r in range(world)]
    for _ in range(2):  # two epochs: the generators advance alike
        permutation = single.permutation()
        perms = [s.permutation() for s in shards]
        assert all(torch.equal(p, permutation) for p in perms)
        per_rank = [list(s.slices(p)) for s, p in zip(shards, perms)]
        seen = []
        for step, expected in enumerate(single.slices(permutation)):
            parts = [per_rank[r][step] for r in range(world)]
            real = [part[:s.local_rows(step)] for part, s in zip(parts, shards)]
            assert torch.equal(torch.cat(real), expected)  # the ranks' parts, in order, are the global batch
            assert sum(s.rank_weight(step) for s in shards) == pytest.approx(world)
            seen.append(torch.cat(real))
        rows = torch.cat(seen)
        assert len(rows) == n and torch.equal(rows.sort().values, torch.arange(n))


def test_a_global_batch_smaller_than_the_world_gives_a_rank_one_row_of_weight_zero():
    shards = [ShardedBatches(InMemoryBatches(9, 4, seed=0), rank=r, world_size=3) for r in range(3)]
    last = len(shards[0]) - 1  # 9 rows in batches of 4: the last holds 1 row
    assert [s.local_rows(last) for s in shards] == [1, 0, 0]
    assert [s.rank_weight(last) for s in shards] == [3.0, 0.0, 0.0]
    permutation = shards[0].permutation()
    assert all(len(list(s.slices(permutation))[last]) == 1 for s in shards)


# ---------------------------------------------------------------- two gloo processes
def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes()) for p in folder.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_a_checkpoint_of_one_process_resumes_on_two_identical_ranks_and_only_rank_0_writes(single, tmp_path):
    """Checkpoint on 1 process, resume on 2 (gloo): the ranks end identical, equal to the uninterrupted single
    run, and rank 1 writes nothing (it resumes from its own copy of the run directory, left byte-identical)."""
    import shutil

    import dlforge
    from dlforge.core.errors import TrainingInterrupted

    run0, run1 = tmp_path / "rank0", tmp_path / "rank1"
    with pytest.raises(TrainingInterrupted):
        dlforge.train(recipe_for(single["csv"]), out=run0, callbacks=[StopAt(1, 2)], progress=False)
    shutil.copytree(run0, run1)
    before = snapshot(run1)
    spawn({"resume": [str(run0), str(run1)], "weights": str(tmp_path)})
    rank0, rank1 = load(tmp_path / "rank0.pt"), load(tmp_path / "rank1.pt")
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)  # the all-reduced gradients keep the ranks equal
    assert_close(rank0, single["weights"])  # the same batches and rows as one process, across the resume
    assert snapshot(run1) == before  # rank 1: no checkpoint, no run file, nothing
    assert (run0 / "model.safetensors").is_file()
    metrics = json.loads((run0 / "metrics.json").read_text())
    assert metrics["processes"] == {"world_size": 2, "strategy": "ddp", "backend": "gloo", "threads_per_process": 1}
    one = json.loads((single["run"] / "metrics.json").read_text())
    assert metrics["test"]["accuracy"] == pytest.approx(one["test"]["accuracy"], abs=1e-6)
    for part in ("val", "test"):  # scored in shares by the two processes, gathered: one process's metrics
        assert metrics[part]["loss"] == pytest.approx(one[part]["loss"], abs=1e-5)
    history = (run0 / "history.csv").read_text().splitlines()
    assert history[1:] != [] and len(history) == len((single["run"] / "history.csv").read_text().splitlines())
    assert len((run0 / "history.csv").read_text().splitlines()) == 4  # header + 3 epochs


@pytest.mark.slow
def test_a_dying_rank_is_named_its_checkpoint_intact_and_it_resumes_on_one_process(single, tmp_path):
    """`dlforge train --nproc 2` where rank 1 dies in epoch 2: exit 2 naming rank 1; resume on 1 process."""
    import dlforge
    from dlforge.training.checkpoint import load_checkpoint

    run = tmp_path / "run"
    proc = train_with_injected(DIE_ON_RANK, "die_on_rank", single["csv"], tmp_path, run)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "rank 1 (local rank 1" in proc.stderr and "exit code 3" in proc.stderr
    assert f"dlforge train --resume {run}" in proc.stderr and "Traceback" not in proc.stderr
    state = load_checkpoint(run)  # intact: rank 0 wrote it atomically at the end of epoch 1
    assert (state["epoch"], state["step"]) == (1, 0)
    dlforge.train(resume=run, callbacks=[SaveWeights(tmp_path / "resumed.pt")], progress=False)
    assert_close(load(tmp_path / "resumed.pt"), single["weights"])


# ---------------------------------------------------------------- the launcher's refusals and decisions
def test_more_processes_than_cores_warns_and_says_why():
    from dlforge.workflows.launch import plan_processes

    plan = plan_processes(4, cores=2, gpus=0)
    assert plan.threads == 1 and plan.nproc == 4
    assert "more than the 2 CPU core(s)" in plan.lines[1] and "still runs" in plan.lines[1]
    assert plan_processes(2, cores=8, gpus=0).threads == 4
    assert len(plan_processes(2, cores=8, gpus=0).lines) == 1


def test_a_rendezvous_port_in_use_is_refused_naming_it(tmp_path, capsys):
    from conftest import main_ok

    csv = _tiny_csv(tmp_path)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe_for(csv)))
    with socket.socket() as busy:
        busy.bind(("", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        assert not main_ok(["train", str(path), "--nproc", "2", "--rdzv-endpoint", f"localhost:{port}",
                            "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert f"rendezvous port {port} is already in use" in err and "--rdzv-endpoint" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("overrides, field", [
    (["training.strategy=fsdp", "training.regularization.l2=0.001"], "training.regularization"),
    (["training.strategy=fsdp", "training.precision=fp16"], "training.precision"),
    (["training.strategy=fsdp", "training.compile=true"], "training.compile"),
    (["training.cross_fit=3"], "training.cross_fit")])
def test_strategies_that_cannot_run_are_refused_before_launching(tmp_path, capsys, overrides, field):
    from conftest import main_ok

    csv = _tiny_csv(tmp_path)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe_for(csv)))
    argv = ["train", str(path), "--nproc", "2", "--out", str(tmp_path / "run")]
    for item in overrides:
        argv += ["--set", item]
    assert not main_ok(argv)
    err = capsys.readouterr().err
    assert field in err and "Traceback" not in err
    if "training.strategy=fsdp" in overrides:  # what FSDP cannot do here is named, with the way out
        assert "not available with fsdp" in err and ("training.strategy: ddp" in err or "bf16" in err)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("t1, t2, picked", [(0.010, 0.014, 1), (0.010, 0.006, 2)])
def test_nproc_auto_picks_the_faster_and_says_why(monkeypatch, t1, t2, picked):
    from dlforge.workflows import launch

    timings = {1: t1, 2: t2}
    monkeypatch.setattr(launch, "probe", lambda job, n, threads: {"step_seconds": timings[n], "batch_size": 64,
                                                                   "world_size": n, "threads_per_process": threads})
    said = []
    assert launch.choose_nproc(object(), cores=2, gpus=0, say=said.append) == picked
    assert f"--nproc auto: {picked} process(es)" in said[0] and "ms a step" in said[0]
    if picked == 1:
        assert "does not pay here" in said[0]
    said.clear()
    assert launch.choose_nproc(object(), cores=1, gpus=0, say=said.append) == 1  # nothing to split: no probe


def test_a_rank_failure_without_checkpoint_says_to_start_over(tmp_path):
    from types import SimpleNamespace

    from dlforge.workflows.launch import rank_failure

    failures = {0: SimpleNamespace(exitcode=-15, local_rank=0, pid=10, message=""),
                1: SimpleNamespace(exitcode=1, local_rank=1, pid=11,
                                   message={"message": "DataError: boom\n  hint: x", "extraInfo": {}})}
    error = rank_failure(SimpleNamespace(failures=failures), run_dir=tmp_path, nproc=2, nnodes=1)
    assert "rank 1 (local rank 1, pid 11) failed, exit code 1: DataError: boom" in error.message
    assert "then rank(s) 0 were stopped" in error.message
    assert "--overwrite" in error.hint


# ---------------------------------------------------------------- Ray Train
@pytest.mark.slow
def test_ray_train_runs_the_same_training_on_two_workers(single, tmp_path):
    pytest.importorskip("ray.train.torch")
    import ray

    from dlforge.workflows.launch import launch_ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        result = launch_ray(recipe_for(single["csv"]), address="local", workers=2, out=tmp_path / "run", quiet=True,
                            say=lambda text: None)
    finally:
        ray.shutdown()
    assert result.metrics["processes"]["world_size"] == 2
    from safetensors.torch import load_file

    ray_weights = load_file(tmp_path / "run" / "model.safetensors")
    one = load_file(single["run"] / "model.safetensors")
    assert_close(ray_weights, one)


def test_ray_workers_get_absolute_paths_for_a_relative_recipe_out_and_run_dir(single, tmp_path, monkeypatch):
    """Ray starts its workers in a directory of its own: `dlforge train recipes/x.yaml --ray-address local` failed
    there with 'no such recipe file' until the paths were made absolute."""
    from dlforge.workflows.launch import absolute_paths, resolve_job

    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "r.yaml").write_text(yaml.safe_dump(recipe_for(single["csv"])))
    monkeypatch.chdir(tmp_path)
    job = resolve_job("recipes/r.yaml", out="runs/r")
    absolute_paths(job)
    assert job.spec["recipe"] == str(tmp_path / "recipes" / "r.yaml")
    assert job.spec["out"] == job.spec["run_dir"] == str(tmp_path / "runs" / "r")


def test_gradual_unfreezing_is_refused_on_several_processes():
    from dlforge.recipe.io import load_recipe
    from dlforge.training.distributed import check_recipe

    recipe = load_recipe({"data": {"source": "x.csv"}, "inputs": [
        {"name": "text", "type": "text", "encoder": {"name": "minilm", "freeze": "all", "unfreeze_at_epoch": 2}}],
        "outputs": [{"name": "y", "type": "binary"}]})
    with pytest.raises(DlforgeError, match="gradual unfreezing") as info:
        check_recipe(recipe, torch.device("cpu"))
    assert info.value.where == "inputs.0.encoder.unfreeze_at_epoch"


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs")
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_gpu_processes_train_over_nccl(single, tmp_path, strategy):
    job = {"recipe": recipe_for(single["csv"], strategy=strategy),
           "outs": [str(tmp_path / "rank0"), str(tmp_path / "rank1")], "weights": str(tmp_path)}
    spawn(job)
    rank0 = load(tmp_path / "rank0.pt")
    if strategy == "ddp":  # (under fsdp rank 0 alone receives the gathered weights)
        rank1 = load(tmp_path / "rank1.pt")
        assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    assert_close(rank0, single["weights"], atol=1e-4)  # GPU kernels sum in another order than the CPU's
    assert json.loads((tmp_path / "rank0" / "metrics.json").read_text())["processes"]["backend"] == "nccl"
    assert not (tmp_path / "rank1").exists()


# ---------------------------------------------------------------- FSDP2, sharded evaluation, an agreed stop
class ShardReport:
    """Writes what this rank holds of the model at the start of training: its shard units and parameter counts."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def on_fit_start(self, trainer):
        from torch.distributed.tensor import DTensor

        params = list(trainer.model.parameters())
        self.path.write_text(json.dumps({
            "units": getattr(trainer.strategy, "units", None),
            "sharded": all(isinstance(p, DTensor) for p in params),
            "local": sum(p.to_local().numel() if isinstance(p, DTensor) else p.numel() for p in params),
            "full": sum(p.numel() for p in params)}))


class StopOnRank(StopAt):
    """Requests a stop on one rank only: the ranks must still stop after the same step."""

    def __init__(self, rank: int, epoch: int, step: int):
        super().__init__(epoch, step)
        self.rank = rank

    def on_step_end(self, trainer, step):
        from dlforge.training.distributed import current

        if current().rank == self.rank:
            super().on_step_end(trainer, step)


def test_evaluation_shares_cover_every_row_once_in_order_with_equal_lengths():
    from types import SimpleNamespace

    from dlforge.training.distributed import DistributedDataParallel

    for n, world in [(10, 3), (9, 3), (2, 3), (1, 2), (2048, 2)]:
        shares = []
        for rank in range(world):
            strategy = DistributedDataParallel.__new__(DistributedDataParallel)
            strategy.process = SimpleNamespace(rank=rank, world_size=world)
            shares.append(strategy.shard_rows(n))
        assert len({len(s) for s in shares}) == 1  # the same number of forward passes on every rank
        assert torch.equal(torch.cat(shares)[:n], torch.arange(n))  # what gather_rows keeps: every row once, in order


@pytest.mark.slow
def test_fsdp_on_two_processes_trains_like_one_and_its_checkpoints_resume_on_fsdp_and_on_one(single, tmp_path):
    """FSDP2 over gloo: stopped on rank 1 only in the middle of an accumulation group (both ranks stop after the
    same step and rank 0 writes the gathered full state), resumed on 2 FSDP processes, and the same checkpoint
    resumed on 1 process: both end at the uninterrupted one-process weights (early stopping's best weights, gathered
    from the shards, restored at the end); the sharded validation and test metrics equal one process's."""
    import dlforge

    training = {"strategy": "fsdp", "grad_clip": 0.5, "accumulate": 2,  # and the best epoch's weights gathered, kept
                "early_stopping": {"metric": "val.loss", "patience": 5, "restore_best": True}}
    recipe = recipe_for(single["csv"], **training)
    one = dlforge.train(recipe, out=tmp_path / "one", callbacks=[SaveWeights(tmp_path / "one.pt")], progress=False)
    stopped = tmp_path / "stopped"
    job = {"recipe": recipe, "outs": [str(tmp_path / "rank0"), str(tmp_path / "rank1")], "weights": str(tmp_path),
           "stop_on_rank": [1, 1, 1], "stop_then_resume": str(stopped)}
    spawn(job)
    shards = [json.loads((tmp_path / f"shards{r}.json").read_text()) for r in (0, 1)]
    assert all(s["sharded"] for s in shards) and shards[0]["units"]  # the input encoders at least
    assert shards[0]["local"] + shards[1]["local"] == shards[0]["full"]  # each rank holds its half, not the whole
    assert max(s["local"] for s in shards) < shards[0]["full"]
    reference = load(tmp_path / "one.pt")
    assert_close(load(tmp_path / "rank0.pt"), reference)  # 2 FSDP processes, across a stop and a resume
    assert not (tmp_path / "rank1.pt").exists() and not (tmp_path / "rank1").exists()  # rank 1 wrote nothing
    metrics = json.loads((tmp_path / "rank0" / "metrics.json").read_text())
    assert metrics["processes"]["strategy"] == "fsdp"
    for part in ("val", "test"):
        assert metrics[part]["loss"] == pytest.approx(one.metrics[part]["loss"], abs=1e-5)
    from dlforge.training.checkpoint import load_checkpoint

    state = load_checkpoint(stopped)
    # rank 1 asked after step 2 of epoch 2; the ranks agreed one step later: mid-group, with its gradients
    assert (state["epoch"], state["step"]) == (1, 3) and state["grads"]
    best = state["early_stopping"]["best_state"]  # epoch 1's weights, whole
    assert best.keys() == state["model"].keys() and all(best[k].shape == state["model"][k].shape for k in best)
    dlforge.train(resume=stopped, callbacks=[SaveWeights(tmp_path / "resumed.pt")], progress=False)
    assert_close(load(tmp_path / "resumed.pt"), reference)


@pytest.mark.slow
def test_ctrl_c_under_nproc_writes_a_fresh_checkpoint_that_resumes_to_the_uninterrupted_weights(single, tmp_path):
    """SIGINT to `dlforge train --nproc 2` in the middle of epoch 2: the launcher forwards it, the ranks agree on
    a step, rank 0 writes that step's checkpoint (not only the epoch-end one), exit 130; the resume on 1 process
    ends at the uninterrupted weights."""
    import dlforge
    from dlforge.training.checkpoint import load_checkpoint

    run = tmp_path / "run"
    proc = train_with_injected(SIGNAL_LAUNCHER, "signal_launcher", single["csv"], tmp_path, run)
    assert proc.returncode == 130, proc.stderr[-3000:]
    assert f"--resume {run}" in proc.stderr and "Traceback" not in proc.stderr
    state = load_checkpoint(run)
    assert state["epoch"] == 1 and 2 <= state["step"] < 6, (state["epoch"], state["step"])  # mid-epoch: fresh
    dlforge.train(resume=run, callbacks=[SaveWeights(tmp_path / "resumed.pt")], progress=False)
    assert_close(load(tmp_path / "resumed.pt"), single["weights"])


class _TinyTextModel(torch.nn.Module):
    """A transformer encoder (3 layers: 3 FSDP units of their own, plus the encoder and the root) and a head."""

    def __init__(self, checkpointing: bool):
        from types import SimpleNamespace

        from dlforge.models.encoders.sequence_layers import TransformerBackbone

        super().__init__()
        torch.manual_seed(0)
        config = SimpleNamespace(dim=16, heads=2, ff_dim=32, dropout=0.0, layers=3, pooling="mean")
        self.encoders = torch.nn.ModuleDict({"text": TransformerBackbone(config, max_length=12)})
        self.encoders["text"].checkpointing = checkpointing
        self.head = torch.nn.Linear(16, 1)

    def forward(self, h, valid):
        return self.head(self.encoders["text"](h, valid))


def _text_batch():
    g = torch.Generator().manual_seed(1)
    h, valid = torch.randn(8, 12, 16, generator=g), torch.ones(8, 12, dtype=torch.bool)
    valid[1, 7:] = valid[6, 3:] = False
    return h, valid, torch.randn(8, 1, generator=g)


def _train_text(model, params, rank: int, world: int, steps: int = 3):
    h, valid, y = _text_batch()
    part = slice(rank * 8 // world, (rank + 1) * 8 // world)  # this rank's half of the global batch
    optimizer = torch.optim.SGD(params, lr=0.1, momentum=0.9)  # (Adam magnifies float noise of tiny clipped grads)
    for _ in range(steps):
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(h[part], valid[part]), y[part]).backward()
        torch.nn.utils.clip_grad_norm_(params, 0.05)  # binding: the norm is global over the shards
        optimizer.step()


def _fsdp_text_rank(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from dlforge.training import distributed
    from dlforge.training.fsdp import FullyShardedDataParallel

    process = distributed.init()
    try:
        strategy = FullyShardedDataParallel(process)
        model = strategy.place_model(_TinyTextModel(checkpointing=True))
        _train_text(model, list(model.parameters()), rank, world)
        state = strategy.state_io.model_state(model)
        units = strategy.units
        plain = strategy.release(model)
        if rank == 0:
            torch.save({"state": state, "units": units, "released": plain.state_dict()}, out)
    finally:
        distributed.shutdown()


@pytest.mark.slow
def test_fsdp_shards_each_transformer_layer_and_trains_like_one_process_with_checkpointing_and_clipping(tmp_path):
    """FSDP2 units per transformer layer, activation checkpointing inside them, gradient clipping over the
    shards: 2 processes on halves of the batch end at one process's weights; the released module holds them."""
    out = tmp_path / "fsdp.pt"
    torch.multiprocessing.spawn(_fsdp_text_rank, args=(2, free_port(), str(out)), nprocs=2, join=True)
    got = load(out)
    assert got["units"] == ["encoders.text.layers.0", "encoders.text.layers.1", "encoders.text.layers.2",
                            "encoders.text"]
    reference = _TinyTextModel(checkpointing=False)
    _train_text(reference, list(reference.parameters()), 0, 1)
    expected = {k: v.detach() for k, v in reference.state_dict().items()}
    assert_close(got["state"], expected)
    assert_close(got["released"], expected)
