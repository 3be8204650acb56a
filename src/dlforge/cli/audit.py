"""`dlforge audit`: a data set's problems in audit.html and audit.json."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

commands = typer.Typer()


@commands.command()
def audit(
    data: str = typer.Argument(..., help="A data file (CSV, Parquet, npz), an image folder, builtin:NAME, or a recipe."),
    target: Optional[str] = typer.Option(None, "--target", help="The column to predict (a recipe: its first output)."),
    out: Path = typer.Option(Path("audit"), "--out", "-o", help="Folder for audit.html and audit.json."),
    plant: bool = typer.Option(True, "--plant/--no-plant", help="Measure the audit's own recall on planted problems "
                               "(flipped labels, rows copied across splits); about doubles the time."),
    seeds: int = typer.Option(1, "--seeds", min=1, max=10, help="Planted copies to average the recall over."),
    flip: float = typer.Option(0.02, "--flip", min=0.001, max=0.5, help="Share of labels flipped in the planted copy."),
    seed: int = typer.Option(0, "--seed", help="Seed of the folds, the planted rows and the IsolationForest."),
):
    """Audit data: balance, missing values, leaky/constant/ID-like columns, duplicates and leakage across splits,
    outliers, likely label errors; writes OUT/audit.html and OUT/audit.json."""
    from dlforge.audit.run import audit as run_audit

    result = run_audit(data, target=target, out=out, plant=plant, plant_seeds=seeds, flip_fraction=flip, seed=seed)
    for line in result.lines:
        typer.echo(f"- {line}")
    seconds = sum(result.findings["seconds"].values())
    typer.echo(f"audited {result.findings['rows']:,} rows in {seconds:.1f} s")
    typer.echo(f"report: {result.html}")
    typer.echo(f"findings: {result.json}")
