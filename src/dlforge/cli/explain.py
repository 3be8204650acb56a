"""`dlforge explain`: attributions for one input or a table of rows, with the sanity check."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from dlforge.core.errors import DlforgeError

commands = typer.Typer()

METHODS = "integrated_gradients | saliency | occlusion | gradient_shap | grad_cam (conv images) | kernel_shap (tables)"


def _mistake_rows(predictor, run: Path):
    """The rows of RUN/mistakes.json, read back from the run's own data (any input type), and their row numbers."""
    import json

    import numpy as np

    from dlforge.artifact.format import read_run_json
    from dlforge.data import read_table
    from dlforge.data.images.files import is_file_column, resolve_paths

    path = run / "mistakes.json"
    if not path.is_file():
        raise DlforgeError(f"{path} does not exist", hint="runs trained with evaluation.mistakes > 0 (the default) "
                                                            "write it; retrain, or explain rows with --data")
    rows = [r["row"] for r in json.loads(path.read_text(encoding="utf-8")).get("rows") or [] if "row" in r]
    if not rows:
        raise DlforgeError(f"{path} lists no mistakes to explain")
    record = read_run_json(run)
    table = read_table(predictor.recipe, Path(record["data"]["base_dir"])).take(np.array(rows))
    for name, sig in predictor.signature["inputs"].items():
        if sig["type"] in ("image", "audio") and is_file_column(table.columns[name]):
            table.columns[name] = resolve_paths(table.columns[name], table.root)
    return table, rows


def _describe_inputs(signature: dict) -> str:
    return ", ".join(f"{n} ({s['type']}{' ' + 'x'.join(map(str, s['shape'])) if 'shape' in s else ''})"
                     for n, s in signature["inputs"].items())


def _how(signature: dict, run: Path) -> str:
    types = [s["type"] for s in signature["inputs"].values()]
    if types == ["image"]:
        return f"dlforge explain {run} digit.png"
    if types == ["text"]:
        return f"dlforge explain {run} --text \"a quietly devastating film\""
    return f"dlforge explain {run} --data rows.csv (a CSV with the columns {', '.join(signature['inputs'])})"


def _inputs(predictor, run: Path, files: list[Path], texts: list[str], data: Optional[Path]):
    """What the user gave, checked against the model's inputs: each way in names the inputs it would need."""
    given = [bool(files), bool(texts), data is not None]
    signature = predictor.signature
    expected = f"this model's inputs: {_describe_inputs(signature)}"
    if sum(given) != 1:
        raise DlforgeError("give one of: image files, --text, or --data FILE", hint=f"{expected}; e.g. "
                           f"{_how(signature, run)}")
    types = [s["type"] for s in signature["inputs"].values()]
    if files:
        if types != ["image"]:
            raise DlforgeError("image files were given, but this model does not take one image", where=str(files[0]),
                               hint=f"{expected}; use {_how(signature, run)}")
        return [str(f) for f in files]
    if texts:
        if types != ["text"]:
            raise DlforgeError("--text was given, but this model does not take one text", where="--text",
                               hint=f"{expected}; use {_how(signature, run)}")
        return list(texts)
    from dlforge.data.readers import ReadOptions, load_table

    return load_table(str(data), field="--data", options=ReadOptions.of(predictor.recipe.data))


@commands.command()
def explain(
    run: Path = typer.Argument(..., help="A run directory."),
    files: List[Path] = typer.Argument(None, help="Image files (for a model with one image input)."),
    text: List[str] = typer.Option(None, "--text", help="A text to explain (repeatable; one-text models)."),
    data: Optional[Path] = typer.Option(None, "--data", help="A CSV/Parquet file of rows to explain (any model)."),
    method: str = typer.Option("integrated_gradients", "--method", "-m", help=METHODS),
    target: Optional[str] = typer.Option(None, "--target", help="The label to explain (default: the predicted one)."),
    output: Optional[str] = typer.Option(None, "--output", help="Which output (default: the first)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Where the files go (default RUN/explanations/)."),
    attention: bool = typer.Option(False, "--attention", help="Attention maps and rollout (transformer, minilm)."),
    global_: bool = typer.Option(False, "--global", help="Permutation importance of every input on the test split "
                                 "(or on --data, labelled)."),
    steps: int = typer.Option(50, "--steps", min=2, max=1000, help="Integrated-gradients steps."),
    batch: Optional[int] = typer.Option(None, "--batch", min=1, help="Rows per forward inside IG (memory bound; "
                                        "default: the recipe's eval batch size)."),
    no_sanity: bool = typer.Option(False, "--no-sanity", help="Skip the model-randomisation check (halves the time)."),
    mistakes: bool = typer.Option(False, "--mistakes", help="Explain the run's worst mistakes (mistakes.json): the "
                                  "report then shows why each was made, beside it."),
):
    """Why the model decides: attributions per pixel, token or column, checked by model randomisation."""
    import dlforge
    from dlforge.explain.methods import get_method

    predictor = dlforge.load(run)
    out = out or Path(run) / "explanations"
    if global_:
        from dlforge.explain.importance import permutation_importance, write_importance

        if files or text:
            raise DlforgeError("--global permutes the test split (or a labelled --data file); drop the inputs")
        table = None
        if data is not None:
            from dlforge.data.readers import ReadOptions, load_table

            table = load_table(str(data), field="--data", options=ReadOptions.of(predictor.recipe.data))
        found = permutation_importance(predictor, data=table, output=output)
        paths = write_importance(found, out)
        typer.echo(f"permutation importance on {found['rows']} rows ({found['metric']} {found['score']:.4f}, "
                   f"{found['repeats']} shuffles each):")
        for name, v in found["importance"].items():
            typer.echo(f"  {name:<24} {v['mean']:+.4f} ± {v['std']:.4f}")
        typer.echo(f"wrote {', '.join(str(p) for p in paths)}")
        return
    from dlforge.explain.spaces import build_spaces

    get_method(method, predictor.model, build_spaces(predictor.model, predictor.signature, predictor.recipe))
    if mistakes:
        if files or text or data:
            raise DlforgeError("--mistakes explains the rows of RUN/mistakes.json; drop the other inputs")
        inputs, rows = _mistake_rows(predictor, Path(run))
        out = out / "mistakes" if out == Path(run) / "explanations" else out
    else:
        inputs, rows = _inputs(predictor, run, files or [], text or [], data), None
    result = dlforge.explain(predictor, inputs, method=method, target=target, output=output, attention=attention,
                             n_steps=steps, internal_batch_size=batch, sanity=not no_sanity)
    paths = result.save(out)
    if rows is not None:  # row -> the inputs that decided, for the report's mistakes table
        from dlforge.core.files import write_json

        why = [{"row": row, "predicted": str(p), "top": [[n, round(float(result.shares[n][i]), 4)] for n in
                                                           sorted(result.shares, key=lambda n: -result.shares[n][i])[:4]]}
               for i, (row, p) in enumerate(zip(rows, result.predicted))]
        write_json(out / "mistakes.json", {"method": method, "rows": why})
        paths.append(out / "mistakes.json")
    for i, (predicted, explained) in enumerate(zip(result.predicted, result.explained)):
        top = sorted(result.shares, key=lambda n: -result.shares[n][i])[:4]  # a wide table: its four leading columns
        shares = ", ".join(f"{n} {result.shares[n][i]:.0%}" for n in top) if len(result.shares) > 1 else ""
        more = " ..." if len(result.shares) > len(top) else ""
        typer.echo(f"row {i}: predicted {predicted}, explained {explained}" + (f"; share: {shares}{more}" if shares else ""))
    if result.sanity:
        typer.echo(f"sanity (model randomisation): Spearman {result.sanity['spearman']:.2f} between the map and the "
                   f"map of a model with its top {len(result.sanity['randomised'])} layers re-initialised "
                   f"(low is good; warned at >= {result.sanity['threshold']})")
    for warning in result.warnings:
        typer.echo(f"warning: {warning}", err=True)
    typer.echo(f"wrote {len(paths)} file(s) to {out} ({result.seconds:.1f} s)")
