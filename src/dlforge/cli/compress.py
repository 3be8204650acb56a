"""`dlforge prune`, `dlforge distill` and `dlforge compress` (the budgeted search over every pass)."""

import typer

commands = typer.Typer()
