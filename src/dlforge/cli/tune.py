"""`dlforge tune`: hyperparameter search over the recipe's `tune.space` (Optuna), resumable, with parallel workers."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

commands = typer.Typer()


def _say(text: str) -> None:
    typer.echo(text, err=True)


@commands.command()
def tune(
    recipe: Optional[Path] = typer.Argument(None, help="Recipe YAML; its tune section is the space to search (without one: a default space around its lr, batch size, weight decay, dropout)."),
    trials: Optional[int] = typer.Option(None, "--trials", help="Trials in the study, all workers together (default: "
                                         "the recipe's tune.trials). With --resume: the new total."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Worker processes on this machine, sharing the "
                                          "study (default 1); each gets cores / workers torch threads."),
    timeout: Optional[str] = typer.Option(None, "--timeout", help="Start no trial after this long, e.g. 600, 10m, "
                                          "1.5h (running trials finish)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output folder (default tune/<recipe name>)."),
    storage: Optional[str] = typer.Option(None, "--storage", help="An RDB URL (postgresql://..., mysql://...) that "
                                          "workers on several machines share; default: a journal file in --out."),
    study_name: Optional[str] = typer.Option(None, "--study-name", help="Study name in the storage (default: the "
                                             "recipe's name); the same on every machine of one search."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue the study in this output folder."),
    set_: List[str] = typer.Option([], "--set", help="Override a field of the recipe, e.g. --set training.epochs=5."),
):
    """Search the recipe's tune.space with Optuna (TPE, Hyperband pruning); every trial is a run directory."""
    from dlforge.cli.common import signals_request
    from dlforge.core.errors import DlforgeError
    from dlforge.training.stop import StopRequest
    from dlforge.workflows.tune import parse_duration
    from dlforge.workflows.tune import tune as run_tune

    seconds = parse_duration(timeout)
    if resume is None and recipe is None:
        raise DlforgeError("give a RECIPE to search, or --resume FOLDER", hint="dlforge tune recipes/adult_tune.yaml "
                           "--trials 40 --workers 2 --out tune/adult")
    if resume is not None and recipe is not None:
        raise DlforgeError("--resume continues a study with its saved recipe; do not pass a recipe with it",
                           hint=f"dlforge tune --resume {resume}")
    if out is None and resume is None:
        from dlforge.recipe.io import load_recipe

        out = Path("tune") / load_recipe(recipe, set_).name
    stop = StopRequest()
    with signals_request(stop):
        result = run_tune(recipe, out=resume if resume is not None else out, trials=trials, workers=workers or 0
                          if resume is not None else workers or 1, timeout=seconds, storage=storage,
                          study_name=study_name, resume=resume is not None, overrides=set_, stop=stop, say=_say)
    counts = ", ".join(f"{v} {k.lower()}" for k, v in sorted(result.counts.items()))
    typer.echo(f"trials: {counts}")
    if result.best is not None:
        best = result.best
        typer.echo(f"best: trial {best['number']}, {best['value']:.6g}; "
                   + ", ".join(f"{k}={v}" for k, v in best["params"].items()))
        typer.echo(f"best recipe: {result.files['best']}  (dlforge train {result.files['best']})")
    else:
        typer.echo("no trial completed: see trials.csv for their errors")
    typer.echo(f"trials: {result.files['trials']}; plots: {result.files['history']}, {result.files['importance']}")
    typer.echo(f"summary: {result.files['summary']}")
