"""Pruning, distillation and `dlforge compress` figures for benchmarks/compress_prune.md.

    python benchmarks/compress_prune.py prune RUN [RUN ...]          # half the channels vs unpruned, per run (seed)
    python benchmarks/compress_prune.py measure RUN PRUNED [RUN PRUNED ...]  # re-time pruned variants made before
                                                                      # (the torch runtime's module and lean paths)
    python benchmarks/compress_prune.py distill TEACHER STUDENT --seeds 0 1 2 --epochs 4
    python benchmarks/compress_prune.py compress RUN [dlforge compress options...]

Latency is measured side by side: the two models take turns in bursts of BURST single-row passes (the order rotating
every round, ROUNDS x REPEATS passes each after a warm-up), each pass timed; the median of each is reported, so a
change in machine load hits both. `measure` also gives thread CPU ms per call (the work without the wait for a core). torch runs with 1 intra-op
thread (the figures say so); the ONNX Runtime figures (when onnxruntime is installed) export both models here with
torch.onnx and run them with intra_op_num_threads=1, sequential execution, all graph optimisations.
Prints one JSON object per measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch

ROUNDS, REPEATS, WARMUP, BURST = 7, 200, 50, 20


def _load(run_dir):
    import dlforge

    return dlforge.load(run_dir)


def _one_row(predictor, data):
    from dlforge.artifact.inputs import from_table
    from dlforge.data.prepare import encode

    table = from_table(data.test_table(), predictor.signature["inputs"])
    x = encode(table, predictor.inputs, None).x
    return {k: v[:1] for k, v in x.items()}, {k: v[:64] for k, v in x.items()}


def _side_by_side(fns: dict, *, repeats: int = REPEATS, burst: int = BURST, cpu: dict | None = None) -> dict[str, float]:
    """Median ms per call of each function: the functions take turns in rounds, `burst` consecutive calls each
    (1: call by call), the order rotating every round (as benchmarks/compress.py), each call timed on its own.
    `cpu`, when given, gets the median thread CPU ms per call (time.thread_time: the work of the call without the
    time this process waits for a core, which on a loaded 2-core machine is most of the wall time)."""
    names = list(fns)
    times = {name: [] for name in names}
    cpu_times = {name: [] for name in names}
    for fn in fns.values():
        for _ in range(WARMUP):
            fn()
    for r in range(ROUNDS * max(1, repeats // burst)):
        for name in names[r % len(names):] + names[:r % len(names)]:
            fn = fns[name]
            for _ in range(burst):
                started, started_cpu = time.perf_counter(), time.thread_time()
                fn()
                cpu_times[name].append(time.thread_time() - started_cpu)
                times[name].append(time.perf_counter() - started)
    if cpu is not None:
        cpu.update({name: 1000 * float(np.median(t)) for name, t in cpu_times.items()})
    return {name: 1000 * float(np.median(t)) for name, t in times.items()}


class Positional(torch.nn.Module):
    """The model over positional tensors (tracing and ONNX export take tuples, the model a dict by input name)."""

    def __init__(self, model, names: list[str]):
        super().__init__()
        self.m, self.names = model, names

    def forward(self, *tensors):
        return tuple(self.m(dict(zip(self.names, tensors))).values())


def _frozen(model, x: dict):
    """The model traced and frozen with TorchScript (torch.jit.trace + freeze; both deprecated in torch 2.13 in
    favour of torch.compile/torch.export): the same ops without Python's per-module dispatch. For the figure only."""
    import warnings

    names = list(x)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", DeprecationWarning)
        frozen = torch.jit.freeze(torch.jit.trace(Positional(model.eval(), names).eval(), tuple(x.values())))
    tensors = tuple(x.values())
    return lambda: frozen(*tensors)


def _one_channel(model, x: dict):
    """A copy of the image CNN with every conv cut to 1 output channel (the dense layer's input shrinks with them):
    the same modules, ops and Python dispatch with almost no arithmetic, i.e. an estimate of one call's fixed cost."""
    import copy

    tiny = copy.deepcopy(model).eval()
    for name, encoder in tiny.encoders.items():
        convs = [i for i, m in enumerate(encoder.features) if isinstance(m, torch.nn.Conv2d)]
        for k, i in enumerate(convs):
            old = encoder.features[i]
            encoder.features[i] = torch.nn.Conv2d(old.in_channels if k == 0 else 1, 1, old.kernel_size, old.stride,
                                                  old.padding, bias=old.bias is not None)
        with torch.no_grad():
            flat = encoder.flatten(encoder.features(x[name])).shape[1]
        first = encoder.dense[0]
        encoder.dense[0] = torch.nn.Linear(flat, first.out_features)
    return tiny.eval()


def _ort_session(model, x: dict, path: Path):
    import onnxruntime as ort

    names = list(x)
    torch.onnx.export(Positional(model.eval(), names), tuple(x.values()), str(path), input_names=names, dynamo=False,
                      dynamic_axes={n: {0: "batch"} for n in names}, opset_version=17)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {n: v.numpy() for n, v in x.items()}
    return lambda: session.run(None, feed)


def bench_prune(runs: list[str], finetune: int) -> None:
    from dlforge.compress.prune import prune_run
    from dlforge.compress.variant import RunData

    torch.set_num_threads(1)
    for run in runs:
        started = time.perf_counter()
        details = prune_run(run, channels=0.5, finetune_epochs=finetune, name="bench_pruned_0.50")
        prune_seconds = time.perf_counter() - started
        data = RunData.load(run)
        base, pruned = _load(run), _load(details["variant"])
        one, batch = _one_row(base, data)
        with torch.no_grad():
            eager = _side_by_side({"unpruned": partial(base.model, one), "pruned": partial(pruned.model, one)})
            eager64 = _side_by_side({"unpruned": partial(base.model, batch), "pruned": partial(pruned.model, batch)},
                                    repeats=20)
        acc = {name: json.loads((Path(d) / "metrics.json").read_text())["test"]["accuracy"]
               for name, d in (("unpruned", run), ("pruned", details["variant"]))}
        row = {"what": "prune", "run": run, "seed": base.recipe.training.seed, "threads": 1, "finetune_epochs": finetune,
               "prune_seconds": round(prune_seconds, 1), "accuracy": acc,
               "point_loss": round(100 * (acc["unpruned"] - acc["pruned"]), 3),
               "torch_b1_ms": eager, "torch_b1_speedup": eager["unpruned"] / eager["pruned"],
               "torch_b64_ms": eager64, "torch_b64_speedup": eager64["unpruned"] / eager64["pruned"],
               "params": [details["before"]["parameters"], details["after"]["parameters"]],
               "macs": [details["before"]["macs"], details["after"]["macs"]],
               "bytes": [details["file_bytes"]["before"], details["file_bytes"]["after"]], "load": os.getloadavg()}
        try:
            with tempfile.TemporaryDirectory() as tmp:
                ort_ms = _side_by_side({"unpruned": _ort_session(base.model, one, Path(tmp) / "a.onnx"),
                                        "pruned": _ort_session(pruned.model, one, Path(tmp) / "b.onnx")})
            row.update(ort_b1_ms=ort_ms, ort_b1_speedup=ort_ms["unpruned"] / ort_ms["pruned"])
        except ImportError as exc:
            row["ort"] = f"not measured ({exc})"
        print(json.dumps(row), flush=True)


def bench_distill(teacher: str, student: str, seeds: list[int], epochs: int, temperature: float,
                  alphas: list[float]) -> None:
    from dlforge.compress.distill import distill
    from dlforge.compress.variant import RunData

    torch.set_num_threads(1)
    data = RunData.load(teacher)
    teacher_p = _load(teacher)
    for seed in seeds:
        for a in alphas:
            started = time.perf_counter()
            d = distill(teacher, student, temperature=temperature, alpha=a, data=data, name=f"bench_{student}_{seed}_{a}",
                        overrides=[f"training.epochs={epochs}", f"training.seed={seed}", "training.threads=1"],
                        register=False)
            row = {"what": "distill", "teacher": teacher, "student": student, "seed": seed, "alpha": a,
                   "temperature": temperature, "epochs": epochs, "seconds": round(time.perf_counter() - started, 1),
                   "metric": d["metric"], "student_score": d["student_score"], "teacher_score": d["teacher_score"],
                   "params": d["parameters"], "teacher_logits_cached": d["teacher_logits_cached"],
                   "load": os.getloadavg()}
            if a == alphas[-1] and seed == seeds[0]:
                student_p = _load(d["variant"])
                t_one, _ = _one_row(teacher_p, data)
                s_one, _ = _one_row(student_p, data)
                with torch.no_grad():
                    ms = _side_by_side({"teacher": partial(teacher_p.model, t_one),
                                        "student": partial(student_p.model, s_one)}, repeats=100)
                row.update(b1_ms=ms, speedup=ms["teacher"] / ms["student"], threads=1)
            print(json.dumps(row), flush=True)


def _runtimes(model, batch_size: int) -> dict:
    """The torch runtime's two forward paths over one model: "module" (the nn.Module, as before) and "lean" (the
    traced graph of artifact/lean.py, the default); each built on the first call (the warm-up)."""
    from dlforge.artifact.runtimes import TorchRuntime

    return {"module": TorchRuntime(model, batch_size=batch_size, lean=False),
            "lean": TorchRuntime(model, batch_size=batch_size, lean=True)}


def _test_parity(predictor, data) -> dict:
    """Test accuracy of each path over the whole test split and the largest logit difference between them."""
    from dlforge.artifact.inputs import from_table
    from dlforge.data.prepare import encode

    sig = predictor.signature
    encoded = encode(from_table(data.test_table(), sig["inputs"], sig["outputs"]), predictor.inputs,
                     predictor.outputs)
    output = next(iter(sig["outputs"]))
    target = encoded.y[output]
    logits = {path: rt.run(encoded.x)[output] for path, rt in _runtimes(predictor.model, predictor.batch_size).items()}
    accuracy = {path: float((value.argmax(1) == target).float().mean()) for path, value in logits.items()}
    return {"rows": len(target), "accuracy": accuracy,
            "max_abs_logit_diff": float((logits["lean"] - logits["module"]).abs().max()),
            "same_predictions": bool(torch.equal(logits["lean"].argmax(1), logits["module"].argmax(1)))}


def bench_measure(pairs: list[str], burst: int = BURST, extras: bool = True) -> None:
    """Re-time (run, pruned variant) pairs made earlier: the torch runtime at batch 1 on both forward paths ("module":
    the nn.Module; "lean": the traced graph, the default), wall and thread CPU ms, all four interleaved; beside them
    the same network cut to 1 channel (the fixed cost of a call, both paths) and batch 64 (both paths). `extras`:
    also the two frozen with TorchScript and ONNX Runtime batch 1 (as round 4). Then each model's test accuracy on
    each path (parity)."""
    from dlforge.compress.variant import RunData

    torch.set_num_threads(1)
    for run, variant in zip(pairs[::2], pairs[1::2]):
        data = RunData.load(run)
        base, pruned = _load(run), _load(variant)
        one, batch = _one_row(base, data)
        load = os.getloadavg()
        b1_cpu, frozen_cpu = {}, {}
        rts = {"unpruned": _runtimes(base.model, base.batch_size), "pruned": _runtimes(pruned.model, pruned.batch_size),
               "one_channel": _runtimes(_one_channel(base.model, one), base.batch_size)}
        fns = {f"{model}_{path}": partial(rt.run, one) for model, paths in rts.items() for path, rt in paths.items()}
        b1 = _side_by_side(fns, burst=burst, cpu=b1_cpu)
        b64 = _side_by_side({f"{model}_{path}": partial(rt.run, batch) for model in ("unpruned", "pruned")
                             for path, rt in rts[model].items()}, repeats=20, burst=min(burst, 20))
        paths = {p: rt.settings for p, rt in rts["pruned"].items()}
        row = {"what": "measure", "run": run, "variant": variant, "threads": 1, "burst": burst,
               "torch_b1_ms": b1, "torch_b1_cpu_ms": b1_cpu, "torch_b64_ms": b64, "paths": paths}
        for path in ("module", "lean"):
            row[f"{path}_b1_speedup"] = b1[f"unpruned_{path}"] / b1[f"pruned_{path}"]
            row[f"{path}_b1_cpu_speedup"] = b1_cpu[f"unpruned_{path}"] / b1_cpu[f"pruned_{path}"]
            row[f"{path}_b64_speedup"] = b64[f"unpruned_{path}"] / b64[f"pruned_{path}"]
            row[f"{path}_fixed_share_of_pruned_cpu"] = b1_cpu[f"one_channel_{path}"] / b1_cpu[f"pruned_{path}"]
        row["lean_gain_b1_cpu"] = {m: b1_cpu[f"{m}_module"] / b1_cpu[f"{m}_lean"] for m in rts}
        row["load_after_b1"] = os.getloadavg()
        if extras:
            with torch.no_grad():
                frozen = _side_by_side({"unpruned": _frozen(base.model, one), "pruned": _frozen(pruned.model, one)},
                                       burst=burst, cpu=frozen_cpu)
            row.update(torchscript_b1_ms=frozen, torchscript_b1_cpu_ms=frozen_cpu,
                       torchscript_b1_cpu_speedup=frozen_cpu["unpruned"] / frozen_cpu["pruned"])
            with tempfile.TemporaryDirectory() as tmp:
                ort_ms = _side_by_side({"unpruned": _ort_session(base.model, one, Path(tmp) / "a.onnx"),
                                        "pruned": _ort_session(pruned.model, one, Path(tmp) / "b.onnx")}, burst=burst)
            row.update(ort_b1_ms=ort_ms, ort_b1_speedup=ort_ms["unpruned"] / ort_ms["pruned"])
        row["test_parity"] = {"unpruned": _test_parity(base, data), "pruned": _test_parity(pruned, data)}
        row.update(load=load, load_after=os.getloadavg())
        print(json.dumps(row), flush=True)


def bench_compress(run: str, options: list[str]) -> None:
    """Wall time and CPU time (user + system, of the child: what the command costs without the machine's load)."""
    import resource

    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "dlforge.cli", "compress", run, *options], capture_output=True,
                          text=True)
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(json.dumps({"what": "compress", "run": run, "options": options, "exit": done.returncode,
                      "wall_s": round(time.perf_counter() - started, 1), "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
                      "load": os.getloadavg(),
                      "stdout": done.stdout[-2000:], "stderr": done.stderr[-4000:]}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("prune")
    p.add_argument("runs", nargs="+")
    p.add_argument("--finetune", type=int, default=1)
    d = sub.add_parser("distill")
    d.add_argument("teacher")
    d.add_argument("student")
    d.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    d.add_argument("--epochs", type=int, default=4)
    d.add_argument("--temperature", type=float, default=4.0)
    d.add_argument("--alphas", type=float, nargs="+", default=[0.0, 0.7], help="0 is the student without the teacher")
    m = sub.add_parser("measure")
    m.add_argument("pairs", nargs="+", help="RUN PRUNED_VARIANT, repeated")
    m.add_argument("--burst", type=int, default=BURST, help="consecutive calls per model before the other's turn "
                   "(1: call by call; default %(default)s, as benchmarks/compress.py)")
    m.add_argument("--no-extras", action="store_true", help="leave out the TorchScript and ONNX Runtime rows")
    c = sub.add_parser("compress")
    c.add_argument("run")
    args, rest = parser.parse_known_args()
    if args.what == "prune":
        bench_prune(args.runs, args.finetune)
    elif args.what == "measure":
        bench_measure(args.pairs, args.burst, extras=not args.no_extras)
    elif args.what == "distill":
        bench_distill(args.teacher, args.student, args.seeds, args.epochs, args.temperature, args.alphas)
    else:
        bench_compress(args.run, rest)


if __name__ == "__main__":
    main()
