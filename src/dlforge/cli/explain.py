"""`dlforge explain`: attributions for one input or a table of rows, with the sanity check."""

import typer

commands = typer.Typer()
