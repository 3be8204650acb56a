"""`dlforge privacy plan`: the noise, steps and epsilon curve of a DP recipe before training."""

import typer

commands = typer.Typer()
