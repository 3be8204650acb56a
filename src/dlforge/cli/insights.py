"""`dlforge report` (regenerate report.html) and `dlforge runs` (tracked runs, compared)."""

import typer

commands = typer.Typer()
