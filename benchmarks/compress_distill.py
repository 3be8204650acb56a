"""Distillation benchmark: a teacher run, a student recipe, students with and without the teacher over seeds.

For each (temperature, alpha, seed) it runs `dlforge.compress.distill.distill` (alpha 0 = the same student trained
on the labels only, through the same code path) and writes one JSON line: validation and test accuracy of the
student, epochs, seconds, and whether the teacher's logits came from the cache (they are computed once). Settings
are chosen on VALIDATION accuracy only (`--report` prints both; the choice reads `val`).

    DLFORGE_TRACKING=off OMP_NUM_THREADS=1 python benchmarks/compress_distill.py --teacher RUN \\
        --student benchmarks/compress_student_text_cnn.yaml --settings 0:1,2:0.5,4:0.7 --seeds 0,1,2 \\
        --results /tmp/distill.jsonl --out /tmp/students
    python benchmarks/compress_distill.py --results /tmp/distill.jsonl --report
    (add --hint sentence|tokens|both --hint-weight B --hint-loss mse|cosine for feature distillation, and
    --set FIELD=VALUE [--tag NAME] for student recipe overrides, e.g. --set training.early_stopping=null)
    python benchmarks/compress_distill.py --teacher RUN --latency /tmp/students/<one student> --n 300
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path


# Options of reverted experiments (h13-distill5: --hint-layer, --hint-warmup, --token-dropout, --hint-preact,
# --freeze-embeddings-epochs; branch history) that rows of benchmarks/compress_distill.jsonl may carry: such a row is
# its own configuration in the report and never stands in for a run of this script.
REVERTED = ("hint_layer", "hint_warmup", "token_dropout", "hint_preact", "freeze_embeddings_epochs")


def machine() -> str:
    """The CPU's model name and torch's CPU capability ("AMD EPYC (AVX2)"): one model name covers EPYCs with and
    without AVX-512, and the same seeds give other numbers on each."""
    import torch

    from dlforge.core.machine import cpu_model

    return f"{cpu_model()} ({torch.backends.cpu.get_cpu_capability()})"


def run(args) -> None:
    import torch

    from dlforge.compress.distill import distill
    from dlforge.compress.variant import RunData

    torch.set_num_threads(args.threads)
    data = RunData.load(args.teacher)
    val = data.part_table("val")
    done = set()
    if Path(args.results).is_file():
        for line in Path(args.results).read_text().splitlines():
            r = json.loads(line)
            done.add((r.get("student"), r["temperature"], r["alpha"], r["seed"], r.get("epochs_set"),
                      r.get("transfer", 0), r.get("soft_loss", "kl"), r.get("hint", "none"), r.get("hint_weight", 0.0),
                      r.get("hint_loss"), tuple(r.get("set", [])), tuple((k, r[k]) for k in REVERTED if r.get(k)),
                      r.get("cpu")))  # a row from another machine does not count as done here
    settings = [tuple(float(v) for v in setting.split(":")) for setting in args.settings.split(",")]
    hinted = args.hint != "none"
    hint_key = (args.hint, args.hint_weight if hinted else 0.0, args.hint_loss if hinted else None, tuple(args.set), (),
                machine())
    for seed in (int(s) for s in args.seeds.split(",")):  # seed by seed: each seed's pair is complete early
        for temperature, alpha in settings:
            if (Path(args.student).stem, temperature, alpha, seed, args.epochs, args.transfer, args.soft_loss,
                    *hint_key) in done:
                continue
            name = (f"{Path(args.student).stem}_T{temperature:g}_a{alpha:g}_s{seed}"
                    + (f"_e{args.epochs}" if args.epochs else "") + (f"_x{args.transfer}" if args.transfer else "") + ("_mse" if args.soft_loss == "mse" else "")
                    + (f"_h{args.hint}{args.hint_weight:g}{args.hint_loss}" if hinted else "")
                    + (f"_{args.tag}" if args.tag else ""))
            overrides = ([f"training.seed={seed}"] + ([f"training.epochs={args.epochs}"] if args.epochs else [])
                         + list(args.set))
            load = os.getloadavg()[0]
            started, cpu = time.perf_counter(), time.process_time()
            d = distill(args.teacher, args.student, temperature=temperature, alpha=alpha, overrides=overrides,
                        name=name, out=Path(args.out) / name, data=data, register=False,
                        say=lambda text: print(text, flush=True), transfer=args.transfer,
                        soft_loss=args.soft_loss, hint=args.hint, hint_weight=args.hint_weight,
                        hint_loss=args.hint_loss)
            from dlforge.artifact.predictor import Predictor

            val_scores = Predictor(d["variant"]).evaluate(val)
            row = {"student": Path(args.student).stem, "transfer": args.transfer,
                   "transfer_rows": d.get("transfer_rows", 0), "temperature": temperature, "alpha": alpha, "soft_loss": args.soft_loss, "hint": args.hint,
                   "hint_weight": hint_key[1], "hint_loss": hint_key[2], "set": list(args.set), "seed": seed,
                   "epochs_set": args.epochs,
                   "epochs": d["epochs"], "val_accuracy": val_scores["accuracy"], "test_accuracy": d["student_score"],
                   "teacher_test": d["teacher_score"], "teacher_logits_cached": d["teacher_logits_cached"],
                   "parameters": d["parameters"], "wall_s": round(time.perf_counter() - started, 1),
                   "cpu_s": round(time.process_time() - cpu, 1), "load_before": round(load, 2),
                   "load_after": round(os.getloadavg()[0], 2), "threads": args.threads, "cpu": machine(),
                   "variant": d["variant"]}
            print(json.dumps(row), flush=True)
            with open(args.results, "a") as f:
                f.write(json.dumps(row) + "\n")


def report(args) -> None:
    import statistics

    rows = [json.loads(line) for line in Path(args.results).read_text().splitlines()]
    groups: dict = {}
    for r in rows:
        hint = "-" if r.get("hint", "none") == "none" else f"{r['hint']} {r['hint_loss']} {r['hint_weight']:g}"
        hint += "".join(f" {s}" for s in r.get("set", [])) + "".join(f" {k}={r[k]}" for k in REVERTED if r.get(k))
        groups.setdefault((r.get("student", "compress_student_text_cnn"), r.get("transfer", 0), r["temperature"],
                           r["alpha"], r.get("epochs_set"), r.get("soft_loss", "kl"), hint, r.get("cpu", "?")),
                          []).append(r)  # machines apart: the same seeds give other numbers on another CPU
    print("| cpu | student | transfer | loss | hint | T | alpha | epochs | seeds | val acc min / mean | test acc min / mean | "
          "epochs run | CPU s per student (mean) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for (student, x, t, a, e, loss, hint, cpu), rs in sorted(groups.items(), key=lambda kv: (
            kv[0][7], kv[0][0], kv[0][1], kv[0][5], kv[0][3], kv[0][2], kv[0][4] or 0, kv[0][6])):
        val = [r["val_accuracy"] for r in rs]
        test = [r["test_accuracy"] for r in rs]
        print(f"| {cpu} | {student} | {x or '-'} | {loss if a else '-'} | {hint} | {t:g} | {a:g} | {e or 'recipe'} | "
              f"{','.join(str(r['seed']) for r in rs)} | "
              f"{min(val):.4f} / {statistics.mean(val):.4f} | {min(test):.4f} / {statistics.mean(test):.4f} | "
              f"{','.join(str(r['epochs']) for r in rs)} | {statistics.mean(r['cpu_s'] for r in rs):.0f} |")


def latency(args) -> None:
    """Teacher vs student at batch 1, torch eager, `threads` threads, interleaved calls on the same test rows."""
    import numpy as np
    import torch

    from dlforge.artifact.predictor import Predictor
    from dlforge.compress.variant import RunData

    torch.set_num_threads(args.threads)
    data = RunData.load(args.teacher)
    test = data.test_table()
    teacher, student = Predictor(args.teacher, runtime="torch"), Predictor(args.latency, runtime="torch")
    texts = np.asarray(test.columns["text"])
    xs = {}
    for who, p in (("teacher", teacher), ("student", student)):
        xs[who] = [p.encode_inputs({"text": texts[i:i + 1]}) for i in range(args.n)]
    # Batch 32: consecutive test rows, each batch padded to its longest text (as `predict` does).
    batches = {who: [p.encode_inputs({"text": texts[i:i + 32]}) for i in range(0, args.n, 32)]
               for who, p in (("teacher", teacher), ("student", student))}
    load = os.getloadavg()[0]
    result = {"rows": args.n, "threads": args.threads}
    for label, inputs, count in (("batch1", xs, args.n), ("batch32", batches, len(batches["teacher"]))):
        times = {"teacher": [], "student": []}
        with torch.no_grad():
            for i in range(count + args.warmup):
                for who, p in (("teacher", teacher), ("student", student)):
                    x = inputs[who][i % count]
                    start = time.perf_counter()
                    p.runtime.run(x)
                    if i >= args.warmup:
                        times[who].append(time.perf_counter() - start)
        p50 = {who: float(np.percentile(t, 50)) * 1000 for who, t in times.items()}
        mean = {who: float(np.mean(t)) * 1000 for who, t in times.items()}
        result[label] = {"p50_ms": p50, "mean_ms": mean, "ratio_p50": p50["teacher"] / p50["student"],
                         "ratio_mean": mean["teacher"] / mean["student"]}
    result["parameters"] = {who: sum(t.numel() for t in p.model.parameters())
                            for who, p in (("teacher", teacher), ("student", student))}
    result["weights_bytes"] = {who: Path(d, "model.safetensors").stat().st_size
                               for who, d in (("teacher", args.teacher), ("student", args.latency))}
    result.update(load_before=round(load, 2), load_after=round(os.getloadavg()[0], 2), cpu=machine())
    print(json.dumps(result))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--teacher")
    ap.add_argument("--student", default="benchmarks/compress_student_text_cnn.yaml")
    ap.add_argument("--settings", default="0:1,2:0.5", help="T:alpha pairs, comma separated (alpha 0: no teacher)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--epochs", type=int, default=None, help="override the student recipe's epochs")
    ap.add_argument("--transfer", type=int, default=0, help="rewrites per training text labelled by the teacher")
    ap.add_argument("--soft-loss", default="kl", choices=("kl", "mse"), help="kl (Hinton) or mse on logits (Tang)")
    ap.add_argument("--hint", default="none", choices=("none", "sentence", "tokens", "both"),
                    help="feature distillation: the teacher's sentence vectors or token states")
    ap.add_argument("--hint-weight", type=float, default=1.0)
    ap.add_argument("--hint-loss", default="mse", choices=("mse", "cosine"))
    ap.add_argument("--set", action="append", default=[], help="a student recipe override (repeatable), e.g. "
                    "'training.schedule={name: cosine}'")
    ap.add_argument("--tag", default="", help="suffix of the students' names (to tell --set runs apart)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--results", default=str(Path(__file__).with_name("compress_distill.jsonl")))
    ap.add_argument("--out", default="/tmp/dlforge-students")
    ap.add_argument("--report", action="store_true")
    ap.add_argument("--latency", help="a student run directory: time it against the teacher at batch 1")
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--warmup", type=int, default=20)
    args = ap.parse_args()
    if args.report:
        report(args)
    elif args.latency:
        latency(args)
    else:
        run(args)


if __name__ == "__main__":
    main()
