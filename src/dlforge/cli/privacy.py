"""`dlforge privacy plan`: the noise, steps and epsilon curve of a DP recipe before training."""

from pathlib import Path
from typing import List

import typer

commands = typer.Typer()
privacy_app = typer.Typer(no_args_is_help=True, help="Differential privacy: plan a DP-SGD budget (docs/privacy.md).")
commands.add_typer(privacy_app, name="privacy")


@privacy_app.command("plan")
def plan(
    recipe: Path = typer.Argument(..., help="Recipe YAML with training.privacy."),
    set_: List[str] = typer.Option([], "--set", help="Override a field, e.g. --set training.privacy.epsilon=1."),
):
    """Print the noise multiplier, sampling rate, steps and the epsilon spent after each epoch; refuse a budget
    that leaves the noise hopeless, with the smallest epsilon the recipe could use. Trains nothing."""
    from dlforge.workflows.plan import privacy_plan

    for line in privacy_plan(recipe, set_).lines():
        typer.echo(line)
