"""The `dlforge` command line: one thin command per public function; every DlforgeError exits with code 2."""

from dlforge.cli.app import app, main

__all__ = ["app", "main"]
