"""`dlforge audit`: a data set's problems in audit.html and audit.json."""

import typer

commands = typer.Typer()
