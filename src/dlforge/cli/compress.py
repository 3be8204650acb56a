"""`dlforge prune`, `dlforge distill` and `dlforge compress` (the budgeted search over every pass)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

commands = typer.Typer()


def _say(text: str) -> None:
    typer.echo(text, err=True)


def _threads(threads: Optional[int]) -> int:
    import torch

    if threads is not None:
        if threads < 1:
            from dlforge.core.errors import DlforgeError

            raise DlforgeError(f"--threads must be >= 1; got {threads}", where="--threads")
        torch.set_num_threads(threads)
    return torch.get_num_threads()


@commands.command()
def prune(
    run: Path = typer.Argument(..., help="A trained run directory."),
    channels: Optional[float] = typer.Option(None, "--channels", help="Structured: the fraction of channels/units to "
                                             "remove from every prunable layer (0.5 = half); layers really shrink."),
    unstructured: Optional[float] = typer.Option(None, "--unstructured", help="Instead: zero this fraction of all "
                                                 "conv/dense weights by global magnitude (no speed-up; see output)."),
    finetune: int = typer.Option(1, "--finetune", help="Fine-tune epochs after each pruning step (0: none)."),
    steps: int = typer.Option(1, "--steps", help="Structured: reach the ratio in K equal steps, fine-tuning after each."),
    lr_scale: float = typer.Option(0.1, "--finetune-lr-scale", help="Fine-tune learning rate as a fraction of the "
                                   "recipe's."),
    name: Optional[str] = typer.Option(None, "--name", help="Variant name (default pruned_<ratio> / sparse_<ratio>)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Write the variant here instead of RUN/variants/<name>/."),
    threads: Optional[int] = typer.Option(None, "--threads", help="torch threads (fine-tune and latency)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No per-epoch progress."),
):
    """Prune a trained run (structured channels or unstructured weights), fine-tune it, write a variant."""
    from dlforge.compress.prune import prune_run

    used = _threads(threads)
    d = prune_run(run, channels=channels, unstructured=unstructured, finetune_epochs=finetune, steps=steps,
                  lr_scale=lr_scale, name=name, out=out, progress=not quiet, say=_say)
    before, after = d["before"], d["after"]
    metrics = d["metrics"]
    part = next(iter(metrics))
    scores = metrics[part]
    typer.echo(f"{d['mode']} pruning, ratio {d['ratio']} in {d['steps']} step(s), {d['finetune_epochs']} fine-tune "
               f"epoch(s) each ({d['seconds']:.1f} s)")
    typer.echo(f"parameters {before['parameters']:,} -> {after['parameters']:,}"
               + (f"; MACs per row {before['macs']:,} -> {after['macs']:,}" if before["macs"] and after["macs"] else "")
               + (f"; zeroed weights {after['sparsity']:.1%}" if d["mode"] == "unstructured" else ""))
    typer.echo(f"batch-1 latency (torch eager, {used} thread(s)) {before['latency_ms_batch1']:.3f} ms -> "
               f"{after['latency_ms_batch1']:.3f} ms; file {d['file_bytes']['before']:,} -> "
               f"{d['file_bytes']['after']:,} bytes ({d['file_bytes']['after_gzip']:,} gzipped)")
    if "note" in d:
        typer.echo(f"note: {d['note']}")
    if "accuracy" in scores:
        typer.echo(f"{part} accuracy {scores['accuracy']:.4f}")
    typer.echo(f"variant: {d['variant']}")


@commands.command()
def distill(
    teacher: Path = typer.Argument(..., help="The teacher's run directory."),
    student: str = typer.Option(..., "--student", help="A student recipe YAML, or an encoder name swapped into the "
                                "teacher's recipe (e.g. text:cnn, mlp)."),
    temperature: float = typer.Option(4.0, "--temperature", help="Softens both distributions (T^2 keeps the scale)."),
    alpha: float = typer.Option(0.7, "--alpha", help="Weight of the soft-target term; 1 - alpha goes to the labels "
                                "(0: the same student trained without the teacher)."),
    set_: List[str] = typer.Option([], "--set", help="Override a field of the student recipe (repeatable), "
                                   "e.g. --set training.epochs=5."),
    name: Optional[str] = typer.Option(None, "--name", help="Variant name (default distilled_<student recipe name>)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Write the student here instead of TEACHER/variants/<name>/."),
    transfer: int = typer.Option(0, "--transfer", help="Add up to N rewrites of every training text (masked words, "
                                 "n-grams; Tang et al. 2019), labelled by the teacher once and cached (text teachers)."),
    soft_loss: str = typer.Option("kl", "--soft-loss", help="kl: the tempered soft targets (Hinton et al.); mse: "
                                  "mean squared error between the logits (Tang et al. 2019; no temperature)."),
    hint: str = typer.Option("none", "--hint", help="Also regress the student's features on the teacher's "
                             "(a training-only projection): sentence (its pooled sentence vector), tokens (its "
                             "last-layer token states; a CNN student on the teacher's word pieces), both, none."),
    hint_weight: float = typer.Option(1.0, "--hint-weight", help="Weight of the hint term added to the loss."),
    hint_loss: str = typer.Option("mse", "--hint-loss", help="mse or cosine (1 - cosine similarity) for the hint."),
    threads: Optional[int] = typer.Option(None, "--threads", help="torch threads."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No per-epoch progress."),
):
    """Train a smaller student on a teacher run's soft targets plus the labels, on the teacher's data."""
    from dlforge.compress.distill import distill as run_distill

    _threads(threads)
    d = run_distill(teacher, student, temperature=temperature, alpha=alpha, overrides=set_, name=name, out=out,
                    progress=not quiet, say=_say, transfer=transfer, soft_loss=soft_loss, hint=hint,
                    hint_weight=hint_weight, hint_loss=hint_loss)
    typer.echo(f"student {d['student_recipe']}: {d['parameters']['student']:,} parameters (teacher "
               f"{d['parameters']['teacher']:,}); {soft_loss} T={temperature}, alpha={alpha}, {d['epochs']} epoch(s) in "
               f"{d['seconds']:.1f} s; teacher logits {'from the cache' if d['teacher_logits_cached'] else 'computed'}"
               + (f"; {hint} hint ({hint_loss}, weight {hint_weight:g}), teacher vectors "
                  f"{'from the cache' if d['teacher_vectors_cached'] else 'computed'}" if hint != "none" else ""))
    typer.echo(f"test {d['metric']}: student {d['student_score']:.4f}, teacher {d['teacher_score']:.4f}")
    typer.echo(f"variant: {d['variant']}")


@commands.command()
def compress(
    run: Path = typer.Argument(..., help="A trained run directory."),
    max_accuracy_drop: Optional[float] = typer.Option(0.01, "--max-accuracy-drop", help="Largest allowed drop of the "
                                                      "main metric, absolute (0.005 = half a point)."),
    max_latency_ms: Optional[float] = typer.Option(None, "--max-latency-ms", help="Largest p50 latency at batch 1."),
    max_size_mb: Optional[float] = typer.Option(None, "--max-size-mb", help="Largest model file, MB."),
    student: Optional[str] = typer.Option(None, "--student", help="Also distill this student (recipe or encoder)."),
    prune_trials: int = typer.Option(3, "--prune-trials", help="Pruning ratios tried (bisected); 0: no pruning."),
    finetune: int = typer.Option(1, "--finetune", help="Fine-tune epochs after pruning."),
    threads: int = typer.Option(1, "--threads", help="torch threads for every measurement (stated in the report)."),
    measure_seconds: float = typer.Option(0.5, "--measure-seconds", help="Timing window per candidate and batch "
                                          "size (longer: steadier figures on a loaded machine)."),
    objective: str = typer.Option("latency", "--objective", help="Among candidates meeting the budgets: latency|size."),
    exhaustive: bool = typer.Option(False, "--exhaustive", help="Run every stage (no early exit)."),
    keep_all: bool = typer.Option(False, "--keep-all", help="Keep every candidate's directory (RUN/compress/work/)."),
    skip: List[str] = typer.Option([], "--skip", help="Leave this pass out of the search (repeatable), e.g. --skip "
                                   "int8_static on a transformer, --skip prune."),
):
    """Search pruning, distillation and the other registered passes under accuracy/latency/size budgets."""
    from dlforge.compress.search import Budgets
    from dlforge.compress.search import compress as search

    result = search(run, Budgets(max_accuracy_drop, max_latency_ms, max_size_mb), student=student,
                    prune_trials=prune_trials, finetune=finetune, threads=threads, seconds=measure_seconds,
                    objective=objective,
                    exhaustive=exhaustive, keep_all=keep_all, skip=skip, say=_say)
    best = result.best
    typer.echo(f"{len(result.entries)} candidate(s) in {result.seconds:.1f} s; best meeting every budget: "
               f"{best.candidate.name} ({best.measurement.metric_name} {best.measurement.metric:.4f}, p50 "
               f"{best.measurement.p50_ms:.3f} ms, {best.measurement.size_mb:.3f} MB)")
    typer.echo(f"kept: {result.kept}" if result.kept else "the run itself meets every budget; nothing new to keep")
    typer.echo(f"report: {result.report}")
