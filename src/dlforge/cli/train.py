"""`dlforge train`: one process, or several through torchrun or Ray Train."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from dlforge.cli.common import metrics_line, signals_request
from dlforge.core.errors import DlforgeError


def train(
    recipe: Optional[Path] = typer.Argument(None, help="Recipe YAML; omitted: the built-in default (builtin:digits)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run directory (default runs/<name>, numbered if taken)."),
    set_: List[str] = typer.Option([], "--set", help="Override a field, e.g. --set training.epochs=3 (repeatable)."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue an interrupted run directory exactly."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out directory."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No per-epoch progress."),
    target: Optional[str] = typer.Option(None, "--target", help="Treat the argument as DATA: infer a recipe "
                                         "predicting this column (as `dlforge init`), then train it."),
    test: Optional[str] = typer.Option(None, "--test", help="Test on this separate labelled file; all of the data "
                                       "trains (sets data.test_source)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="With --target: print the whole inferred recipe."),
    pretrained: bool = typer.Option(True, "--pretrained/--no-pretrained", help="With --target, free text: the "
                                    "pretrained MiniLM when installed (default), or the from-scratch n-gram encoder."),
    no_baseline: bool = typer.Option(False, "--no-baseline", help="Skip the scikit-learn baseline of tabular runs "
                                     "(same as --set training.baseline=false)."),
    nproc: Optional[str] = typer.Option(None, "--nproc", help="Data-parallel processes on this machine (DDP through "
                                        "torch.distributed.run; gloo on CPU, NCCL on GPU), or auto: time a few "
                                        "steps with 1 and N and take the faster. With --ray-address: Ray workers."),
    nnodes: int = typer.Option(1, "--nnodes", help="Machines in the job (run the same command on each)."),
    node_rank: int = typer.Option(0, "--node-rank", help="This machine's place, 0..nnodes-1 (0 hosts the rendezvous)."),
    rdzv_endpoint: Optional[str] = typer.Option(None, "--rdzv-endpoint", help="host:port of node 0's rendezvous "
                                                "(several machines, or a fixed port on one)."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="Train through Ray Train's TorchTrainer: "
                                              "auto (a running cluster) or local (start one here); needs "
                                              "pip install 'dlforge[ray]'."),
):
    """Train a recipe and write its run directory (model, metrics, report)."""
    import dlforge

    inferred = None
    if target is not None:
        import yaml

        from dlforge.workflows.init import init, summarize_inferred

        if recipe is None:
            raise DlforgeError("--target needs a DATA argument", hint="dlforge train data.csv --target label")
        inferred = init(str(recipe), target, test=test, pretrained=None if pretrained else False,
                        baseline=False)  # training fits the baseline once, beside the model
        typer.echo(inferred if verbose else "\n".join(summarize_inferred(inferred)), err=True)
        recipe = yaml.safe_load(inferred)
    elif test is not None:
        set_ = [*set_, f"data.test_source={test}"]
    if resume is not None and (recipe is not None or set_):
        raise DlforgeError("--resume continues a run with its saved recipe; do not pass a recipe or --set with it",
                           hint=f"run `dlforge train --resume {resume}` alone")
    if no_baseline:
        set_ = [*set_, "training.baseline=false"]
    if ray_address is not None or nproc is not None or nnodes > 1 or rdzv_endpoint is not None:
        result = _launch(recipe, nproc=nproc, nnodes=nnodes, node_rank=node_rank, rdzv_endpoint=rdzv_endpoint,
                         ray_address=ray_address, out=out, overrides=set_, resume=resume, overwrite=overwrite,
                         quiet=quiet)
        if not result.metrics:  # another node than rank 0's: the run directory is written there
            typer.echo(f"node {node_rank}: done; rank 0 wrote the run directory")
            return
    else:
        from dlforge.training.stop import StopRequest

        stop = StopRequest()
        with signals_request(stop):
            result = dlforge.train(recipe, out=out, overrides=set_, resume=resume, overwrite=overwrite,
                                   progress=not quiet, stop=stop)
    scores = result.metrics.get("test") or result.metrics.get("val") or {}
    split = "test" if "test" in result.metrics else "val"
    typer.echo(f"{split}: {metrics_line(scores)}")
    baseline = result.metrics.get("baseline") or {}
    if baseline and "skipped" not in baseline:
        from dlforge.evaluation.baseline import compare_line

        typer.echo(compare_line(scores, baseline))
    compiled = result.metrics.get("compile_seconds")
    processes = result.metrics.get("processes")
    sampled = result.metrics.get("sampled")
    if sampled:
        values = next(v for k, v in sampled.items() if isinstance(v, dict))
        typer.echo(f"sampled protocol (1 + {sampled['negatives_per_user']} negatives; flatters every model, full ranking "
                   f"above is the number to trust): {metrics_line(values)}")
    typer.echo(f"trained {result.metrics['epochs_run']} epoch(s) in {result.metrics['train_seconds']:.1f} s "
               + (f"(of which {compiled:.1f} s the first compiled step) " if compiled is not None else "")
               + (f"on {processes['world_size']} processes ({processes['strategy']}, {processes['backend']}, "
                  f"{processes['threads_per_process']} thread(s) each) " if processes else "")
               + f"(+{result.metrics.get('prepare_seconds', 0):.1f} s reading and preparing the data)")
    if inferred is not None:
        from dlforge.core.files import write_text

        write_text(result.run_dir / "inferred_recipe.yaml", inferred)
        typer.echo(f"inferred recipe (with its reasons): {result.run_dir / 'inferred_recipe.yaml'}")
    typer.echo(f"run directory: {result.run_dir}")
    typer.echo(f"report: {result.report}")


def _launch(recipe, *, nproc, nnodes, node_rank, rdzv_endpoint, ray_address, out, overrides, resume, overwrite,
            quiet):
    """`dlforge train` on several processes: torch.distributed.run, or Ray Train with --ray-address."""
    from dlforge.workflows.launch import launch_ray, launch_torchrun

    count: int | str = "auto" if nproc == "auto" else None
    if nproc is not None and nproc != "auto":
        if not nproc.isdigit() or int(nproc) < 1:
            raise DlforgeError(f"--nproc must be a positive number or auto, got {nproc!r}", where="--nproc",
                               hint="e.g. --nproc 2")
        count = int(nproc)
    kwargs = {"out": out, "overrides": overrides, "resume": resume, "overwrite": overwrite, "quiet": quiet}
    if ray_address is not None:
        if count == "auto":
            raise DlforgeError("--nproc auto times torchrun jobs; with --ray-address give the worker count",
                               where="--nproc", hint="e.g. --ray-address local --nproc 2")
        return launch_ray(recipe, address=ray_address, workers=count or 2, **kwargs)
    return launch_torchrun(recipe, nproc=count or 1, nnodes=nnodes, node_rank=node_rank,
                           rdzv_endpoint=rdzv_endpoint, **kwargs)
