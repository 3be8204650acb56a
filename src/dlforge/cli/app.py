"""The `dlforge` command: one thin command per public function. Every DlforgeError exits with code 2."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer

from dlforge.cli import audit, compress, explain, export, federate, insights, privacy, recommend, tune
from dlforge.cli.common import echo_err, echo_runtime, metrics_line
from dlforge.cli.train import train
from dlforge.core.errors import DlforgeError, TrainingInterrupted

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="dlforge: a recipe in, a trained, evaluated and servable model out.")
recipe_app = typer.Typer(no_args_is_help=True, help="Check a recipe or print its schema.")
app.add_typer(recipe_app, name="recipe")
# Command families that live in their own file (cli/<family>.py, each a `commands` Typer) join the top level.
for _family in (export, compress, explain, audit, insights, privacy, recommend, tune, federate):
    app.add_typer(_family.commands)


app.command()(train)


@app.command()
def evaluate(
    run: Path = typer.Argument(..., help="A run directory."),
    data: Optional[Path] = typer.Option(None, "--data", help="Labelled data to score (default: the run's test split)."),
    as_json: bool = typer.Option(False, "--json", help="Print all metrics as JSON."),
    runtime: Optional[str] = typer.Option(None, "--runtime", help="torch | onnx (after `dlforge export`); default "
                                          "torch, or onnx for a variant that only exists as ONNX."),
):
    """Score a trained run on its test split or on other labelled data."""
    import dlforge

    metrics = dlforge.evaluate(run, data, runtime=runtime)
    echo_runtime(run, runtime)
    typer.echo(json.dumps(metrics, indent=2) if as_json else metrics_line(metrics))


@app.command()
def predict(
    run: Path = typer.Argument(..., help="A run directory."),
    files: List[Path] = typer.Argument(None, help="Image or sound files (for a model with one image or audio input)."),
    data: Optional[Path] = typer.Option(None, "--data", help="A CSV/Parquet file with the model's input columns."),
    output: Optional[Path] = typer.Option(None, "--output", help="Write predictions as CSV here instead of printing."),
    proba: bool = typer.Option(False, "--proba", help="Add one probability column per class."),
    runtime: Optional[str] = typer.Option(None, "--runtime", help="torch | onnx (after `dlforge export`); default "
                                          "torch, or onnx for a variant that only exists as ONNX."),
):
    """Predict from image or sound files, or a table of inputs."""
    import numpy as np
    import pandas as pd

    import dlforge
    from dlforge.data.readers import ReadOptions, load_table

    predictor = dlforge.load(run, runtime=runtime)
    if bool(files) == bool(data):
        raise DlforgeError("give image or sound files, or --data FILE (one of the two)", hint=f"dlforge predict {run} digit.png")
    if files:
        from dlforge.data.features import kind_of

        file_inputs = [n for n, s in predictor.signature["inputs"].items() if kind_of(s).file_input]
        if len(predictor.signature["inputs"]) != 1 or not file_inputs:
            raise DlforgeError("file arguments work for models with one image or audio input; use --data for this model")
        inputs = {file_inputs[0]: [str(f) for f in files]}
        frame = pd.DataFrame({"file": [str(f) for f in files]})
    else:
        # A Table (image paths are relative to its folder), its cells read as training read them (data.na_values).
        inputs = load_table(str(data), field="--data", options=ReadOptions.of(predictor.recipe.data))
        frame = pd.DataFrame({n: v for n, v in inputs.columns.items() if np.asarray(v).ndim == 1})
    predictions = predictor.predict(inputs)
    echo_runtime(run, predictor.runtime.name, getattr(predictor.runtime, "settings", None))
    for name, values in (predictions.items() if isinstance(predictions, dict) else [(predictor.output_names[0], predictions)]):
        frame[f"predicted_{name}"] = values
    if proba:
        probs = predictor.predict_proba(inputs)
        for name, matrix in (probs.items() if isinstance(probs, dict) else [(predictor.output_names[0], probs)]):
            for i, label in enumerate(predictor.labels(name)):
                frame[f"p_{name}_{label}"] = matrix[:, i]
    if output:
        frame.to_csv(output, index=False)
        typer.echo(f"wrote {len(frame)} prediction(s) to {output}")
    else:
        typer.echo(frame.to_csv(index=False), nl=False)


@app.command()
def serve(
    run: Path = typer.Argument(..., help="A run directory."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (loopback by default)."),
    port: int = typer.Option(8000, "--port", help="TCP port."),
    workers: int = typer.Option(1, "--workers", help="Worker processes, each with its own model and batcher."),
    threads: Optional[int] = typer.Option(None, "--threads", help="torch threads per worker (default: CPUs / workers)."),
    max_batch: int = typer.Option(64, "--max-batch", help="Rows per forward pass at most; 1 turns batching off."),
    max_wait_ms: float = typer.Option(5.0, "--max-wait-ms", help="How long a batch waits for requests being received."),
    inline_ms: float = typer.Option(5.0, "--inline-ms", help="Batches predicted under this many ms may run in the "
                                    "event loop thread when measured faster than the inference thread; 0: never."),
    max_queue: int = typer.Option(256, "--max-queue", help="Waiting requests at most; more get 503 + Retry-After."),
    timeout: float = typer.Option(30.0, "--timeout", help="Seconds before an unanswered request gets 504."),
    api_key_file: Optional[Path] = typer.Option(None, "--api-key-file", help="File with the API key(s), one per line."),
    insecure: bool = typer.Option(False, "--insecure", help="Allow a non-loopback --host without an API key."),
    cors_origin: List[str] = typer.Option([], "--cors-origin", help="Allow browser calls from this origin (repeatable)."),
    max_body_mb: float = typer.Option(10.0, "--max-body-mb", help="Larger request bodies get 413."),
    max_pixels: int = typer.Option(16_000_000, "--max-pixels", help="Larger images get 413."),
    max_records: int = typer.Option(1024, "--max-records", help="Records per request at most."),
    access_log: bool = typer.Option(False, "--access-log", help="Log every request."),
    header_timeout: float = typer.Option(10.0, "--header-timeout",
                                         help="Seconds for a request's line and headers to arrive; else 408."),
    body_timeout: float = typer.Option(30.0, "--body-timeout", help="Seconds for a request's body to arrive; else 408."),
    keep_alive: float = typer.Option(5.0, "--keep-alive", help="Seconds before an idle kept-alive connection is closed."),
    max_header_kb: float = typer.Option(16.0, "--max-header-kb", help="Larger request heads get 431."),
    limit_concurrency: int = typer.Option(512, "--limit-concurrency",
                                          help="Connections or requests per worker at once; more get 503."),
    runtime: Optional[str] = typer.Option(None, "--runtime", help="torch | onnx; default onnx when the run has "
                                          "model.onnx (`dlforge export`), else torch."),
):
    """Serve a run directory over HTTP: REST API with dynamic batching, web page, Prometheus metrics."""
    from pydantic import ValidationError

    from dlforge.serve import ServeConfig
    from dlforge.serve import serve as run_server

    try:
        config = ServeConfig(run_dir=str(run), host=host, port=port, workers=workers, threads=threads,
                             max_batch=max_batch, max_wait_ms=max_wait_ms, inline_ms=inline_ms, max_queue=max_queue,
                             timeout_s=timeout,
                             api_key_file=str(api_key_file) if api_key_file else None, insecure=insecure,
                             cors_origins=cors_origin, max_body_mb=max_body_mb, max_pixels=max_pixels,
                             max_records=max_records, access_log=access_log, header_timeout_s=header_timeout,
                             body_timeout_s=body_timeout, keep_alive_s=keep_alive, max_header_kb=max_header_kb,
                             limit_concurrency=limit_concurrency, runtime=runtime)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise DlforgeError(f"{first['msg']} (got {first.get('input')!r})",
                           where="--" + str(first["loc"][0]).replace("_s", "").replace("_", "-")) from None
    run_server(config)


@app.command()
def init(
    data: str = typer.Argument(..., help="A CSV/Parquet/npz file, an image folder, or builtin:NAME."),
    target: Optional[str] = typer.Option(None, "--target", help="The column to predict (required; without it the "
                                         "error lists the columns)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write the recipe here (default: print it)."),
    drop: List[str] = typer.Option([], "--drop", help="Leave this column out (repeatable)."),
    test: Optional[str] = typer.Option(None, "--test", help="A separate labelled file to test on (data.test_source); "
                                       "all of DATA then trains."),
    pretrained: bool = typer.Option(True, "--pretrained/--no-pretrained", help="Free text: use the pretrained MiniLM "
                                    "when installed (default), or always the from-scratch n-gram encoder."),
    no_baseline: bool = typer.Option(False, "--no-baseline", help="Skip the quick scikit-learn baseline of a "
                                     "tabular recipe (written as comments at the end)."),
):
    """Write a starter recipe inferred from the data, with one comment per column decision."""
    from dlforge.workflows.init import init as infer_init

    text = infer_init(data, target, out=out, drop=tuple(drop), test=test, pretrained=None if pretrained else False,
                      baseline=not no_baseline)
    if out is None:
        typer.echo(text, nl=False)
    else:
        typer.echo(f"wrote {out}; train it with: dlforge train {out}")


@app.command()
def cv(
    recipe: Path = typer.Argument(..., help="Recipe YAML."),
    folds: int = typer.Option(5, "--folds", help="Number of folds (stratified for category/binary targets)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Folder for folds.csv and cv.json (default runs/<name>-cv)."),
    set_: List[str] = typer.Option([], "--set", help="Override a field, e.g. --set training.epochs=3."),
):
    """k-fold cross-validation: mean ± std of each metric over the held-out folds, per-fold CSV."""
    from dlforge.workflows.cv import cross_validate
    from dlforge.recipe.io import load_recipe

    out = out or Path("runs") / f"{load_recipe(recipe, set_).name}-cv"
    result = cross_validate(recipe, folds=folds, out=out, overrides=set_)
    for metric in result.summary:
        typer.echo(result.line(metric))
    typer.echo(f"per-fold results: {out / 'folds.csv'}")


@app.command("lr-find")
def lr_find(
    recipe: Optional[Path] = typer.Argument(None, help="Recipe YAML; omitted: the built-in default."),
    set_: List[str] = typer.Option([], "--set", help="Override a field, e.g. --set training.batch_size=32."),
    plot: Path = typer.Option(Path("lr_find.svg"), "--plot", help="Where to save the loss-vs-rate plot (SVG)."),
    start_lr: float = typer.Option(1e-7, "--start-lr", min=1e-12, help="First rate of the sweep."),
    end_lr: float = typer.Option(10.0, "--end-lr", help="Last rate of the sweep."),
    steps: int = typer.Option(200, "--steps", min=10, max=10000, help="Training steps of the sweep."),
):
    """Learning-rate range test: exponentially rising rate, smoothed loss, plot, and a suggested rate."""
    import dlforge

    if end_lr <= start_lr:
        raise DlforgeError(f"--end-lr ({end_lr}) must be larger than --start-lr ({start_lr})", where="--end-lr")
    result = dlforge.lr_find(recipe, overrides=set_, plot=plot, start_lr=start_lr, end_lr=end_lr, steps=steps)
    stop = " (stopped early: the loss diverged)" if result.stopped_early else ""
    typer.echo(f"swept {len(result.lrs)} steps from {result.lrs[0]:.1e} to {result.lrs[-1]:.1e}{stop}")
    typer.echo(f"lowest smoothed loss at lr {result.min_loss_lr:.2e}")
    typer.echo(f"suggested lr: {result.suggestion:.2e}  (steepest descent; set training.optimizer.lr, or use lr: auto)")
    typer.echo(f"plot: {result.plot}")


@recipe_app.command("check")
def recipe_check(
    recipe: Optional[Path] = typer.Argument(None, help="Recipe YAML; omitted: the built-in default."),
    set_: List[str] = typer.Option([], "--set", help="Override a field, e.g. --set training.epochs=3."),
    no_data: bool = typer.Option(False, "--no-data", help="Validate the recipe only; do not read the data."),
):
    """Validate a recipe and show the plan: resolved recipe, features, parameters, steps. No training."""
    import yaml

    import dlforge

    info = dlforge.plan(recipe, set_, with_data=not no_data)
    typer.echo("# resolved recipe (all defaults filled in)")
    typer.echo(yaml.safe_dump(info["recipe"], sort_keys=False).rstrip())
    if no_data:
        return
    typer.echo("\n# plan")
    typer.echo(f"rows: {info['rows']}")
    for line in info["data"][1:]:  # the first line repeats the rows
        typer.echo(line)
    for name, sig in info["signature"]["inputs"].items():
        typer.echo(f"input  {name}: {json.dumps(sig)[:160]}")
    for name, sig in info["signature"]["outputs"].items():
        typer.echo(f"output {name}: {json.dumps(sig)[:160]}")
    if info["policies"]:
        typer.echo(f"preprocessing policies applied: {info['policies']}")
    for name, why in info.get("backbones", {}).items():
        typer.echo(f"backbone {name}: " + ("frozen, no augmentation: embeddings computed once and cached; only the "
                                           "head trains" if why == "cached" else why))
    lr = info["recipe"]["training"]["optimizer"]["lr"]
    if lr == "auto":
        typer.echo("optimizer.lr: auto — the learning-rate range test runs before training")
    typer.echo(f"parameters: {info['parameters']:,}")
    typer.echo(f"steps: {info['steps_per_epoch']} per epoch, {info['total_steps']} at most")
    typer.echo(f"batches: {info['batches']}")
    for notice in info.get("notices", []):
        typer.echo(f"warning: {notice}")


@recipe_app.command("schema")
def recipe_schema(markdown: bool = typer.Option(False, "--markdown", help="The field reference as Markdown (docs/recipe.md).")):
    """Print the recipe's JSON schema (or the Markdown reference)."""
    from dlforge.recipe import Recipe

    if markdown:
        from dlforge.recipe.reference import render_markdown

        typer.echo(render_markdown(), nl=False)
    else:
        typer.echo(json.dumps(Recipe.model_json_schema(), indent=2))


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app and turn dlforge errors into two readable lines and exit code 2."""
    try:
        app(args=argv, standalone_mode=False)
    except TrainingInterrupted as exc:
        echo_err(f"interrupted: {exc.render()}")
        sys.exit(exc.exit_code)
    except DlforgeError as exc:
        echo_err(f"error: {exc.render()}")
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        echo_err("interrupted")
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        sys.exit(130)
    except _click_exceptions().ClickException as exc:  # usage errors: unknown option, missing argument
        exc.show()
        sys.exit(2)


def _click_exceptions():
    """The click exceptions typer raises: its vendored copy (`typer._click`, typer >= 0.22), else click itself.

    The vendored copy comes first: click may still be installed for another package (uvicorn needs it), and
    its classes are not the ones a new typer raises."""
    try:
        from typer._click import exceptions
    except ImportError:
        from click import exceptions
    return exceptions


if __name__ == "__main__":
    main()
