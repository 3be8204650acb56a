"""`dlforge report` (regenerate report.html) and `dlforge runs` (tracked runs, compared)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from dlforge.core.errors import DlforgeError

commands = typer.Typer()


@commands.command()
def report(run: Path = typer.Argument(..., help="A run directory (runs/<name>), complete or interrupted.")) -> None:
    """Rebuild RUN/report.html from the run directory's files (metrics, plots, audit.json, explanations/)."""
    from dlforge.workflows.runs import report as build

    path = build(run)
    typer.echo(f"report: {path}")


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1e4 else f"{value:.4g}"
    return str(value)


@commands.command()
def runs(
    directory: Path = typer.Option(Path("runs"), "--dir", help="The folder holding run directories."),
    compare: Optional[List[Path]] = typer.Option(None, "--compare", help="Two run directories to compare: "
                                                 "--compare RUN --compare RUN, or --compare RUN RUN."),
    store: Optional[str] = typer.Option(None, "--store", help="An MLflow tracking URI to list as well (default: "
                                        "DIR/mlflow.db when it exists and the `track` extra is installed)."),
    extra: Optional[List[Path]] = typer.Argument(None, hidden=True),
) -> None:
    """List the runs (rich table: status, epochs, test metrics, ECE), or compare two (--compare A B)."""
    from rich.console import Console
    from rich.table import Table

    from dlforge.workflows.runs import compare_runs, list_runs

    console = Console(width=None if sys.stdout.isatty() else 200)  # a pipe or a file: no wrapping at 80
    if compare:
        chosen = [*compare, *(extra or [])]
        if len(chosen) != 2:
            raise DlforgeError(f"--compare takes two run directories; got {len(chosen)}",
                               where="--compare", hint="dlforge runs --compare runs/a runs/b")
        result = compare_runs(*chosen)
        a, b = result["runs"]
        params = Table(title="recipe fields that differ")
        for column in ("field", a, b):
            params.add_column(column)
        for key, va, vb in result["params"]:
            params.add_row(key, _cell(va), _cell(vb))
        console.print(params if result["params"] else "the two recipes are the same")
        table = Table(title="metrics")
        for column in ("metric", a, b, "b - a"):
            table.add_column(column, justify="right" if column != "metric" else "left")
        for key, va, vb, delta in result["metrics"]:
            table.add_row(key, _cell(va), _cell(vb), _cell(delta))
        console.print(table)
        return
    if extra:
        raise DlforgeError(f"unexpected argument(s) {[str(p) for p in extra]}", where="dlforge runs",
                           hint="dlforge runs [--dir runs] [--compare RUN RUN]")
    rows = list_runs(directory, store=store)
    if not rows:
        typer.echo(f"no runs under {directory}/ (train one with `dlforge train RECIPE`)")
        return
    table = Table(title=f"runs under {directory}/")
    columns = ("name", "status", "epochs", "train_seconds", "split", "accuracy", "roc_auc", "macro_f1", "rmse", "r2",
               "ece", "modified", "run")
    shown = [c for c in columns if any(r.get(c) is not None for r in rows)]
    for column in shown:
        table.add_column({"train_seconds": "seconds"}.get(column, column.replace("_", " ")),
                         no_wrap=column != "run", overflow="fold")
    for row in rows:
        table.add_row(*[_cell(row.get(c)) for c in shown])
    console.print(table)
