"""Compression benchmark: torch eager fp32 vs onnxruntime fp32 / int8 static / int8 dynamic, side by side.

    PYTHONPATH=src DLFORGE_DATA=../shared/data python benchmarks/compress.py --cnn runs/mnist_cnn \
        [--text runs/text_minilm] [--effnet runs/transfer_effnet] [--serve-seconds 10] [--threads 1] [--blocks 10]

For each run: exports it (if it has no model.onnx) and quantizes it (variants int8_static / int8_dynamic, if
missing), then measures at batch 1 the forward pass only (torch: the module under inference_mode; onnx: the
InferenceSession's run), interleaved round-robin over the engines so that every engine sees the same
background load: p50/p95 over --n calls after --warmup. Also: file size, the main metric on the whole test
split through each runtime (`dlforge.evaluate`), and, for the text model, 128 real tokens and the test
sentences at their real lengths. `--serve-seconds` > 0 adds `dlforge serve --runtime torch|onnx` on the CNN at
concurrency 32 (the closed-loop load generator of benchmarks/serve.py; with `--serve-wrk` each server is also
measured under wrk's load, reported beside). Results: stdout and --out (JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def machine() -> dict:
    import torch

    from dlforge.core.machine import cpu_model

    return {"cpu": cpu_model(), "cores": os.cpu_count(), "torch_capability": torch.backends.cpu.get_cpu_capability(),
            "torch": torch.__version__, "onnxruntime": __import__("onnxruntime").__version__,
            "load_before": os.getloadavg()}


def prepare(run: Path, modes: list[str]) -> dict[str, Path]:
    """{engine: run dir}: exports and quantizes when not done yet (each step printed)."""
    from dlforge.compress.onnx_export import export_onnx
    from dlforge.compress.quantize import quantize_run

    if not (run / "model.onnx").is_file():
        started = time.time()
        export_onnx(run)
        print(f"exported {run} in {time.time() - started:.0f} s", flush=True)
    dirs = {"torch_fp32": run, "ort_fp32": run}
    for mode in modes:
        variant = run / "variants" / f"int8_{mode}"
        if not (variant / "model.onnx").is_file():
            started = time.time()
            quantize_run(run, mode=mode)
            print(f"quantized {run} ({mode}) in {time.time() - started:.0f} s", flush=True)
        dirs[f"ort_int8_{mode}"] = variant
    return dirs


def engines(dirs: dict[str, Path], threads: int) -> dict:
    """{engine: (callable on a feed dict of numpy arrays, needs_scaled)}."""
    import torch

    import dlforge
    from dlforge.artifact.onnx_runtime import open_session, read_export_json, read_onnx_bytes

    torch.set_num_threads(threads)
    out = {}
    predictor = dlforge.load(dirs["torch_fp32"], runtime="torch")
    model = predictor.model.eval()

    def torch_call(feed, model=model):
        with torch.inference_mode():
            return model({k: torch.from_numpy(v) for k, v in feed.items()})

    out["torch_fp32"] = (torch_call, True)
    for name, run in dirs.items():
        if name == "torch_fp32":
            continue
        record = read_export_json(run)
        session, settings = open_session(read_onnx_bytes(run, record), threads=threads, where=str(run),
                                         record=record)
        out[name] = (lambda feed, session=session: session.run(None, feed), False)
    return out


def interleaved(calls: dict, feeds: list[tuple[dict, dict]], n: int, warmup: int, blocks: int = 10,
                burst: int = 1) -> dict:
    """p50/p95 in ms per engine; engines take turns, `burst` calls each (1: call by call), the engine order rotating
    every round. feeds: (scaled feed, raw feed) pairs. With torch among the engines, each other engine's speed-up
    over it, overall and per block of n/blocks calls (the spread).

    Why `burst` and the rotation: with a fixed order and burst 1, the engine called right after torch eager pays for
    the caches torch's call evicted (measured: the same int8 graph 0.095 ms right after torch, 0.074 ms one place
    later); bursts of 20 measure each engine warm, and rotating the order spreads whatever remains evenly."""
    names = list(calls)
    times = {name: [] for name in names}
    rounds = -(-(warmup + n) // burst)
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            call, needs_scaled = calls[name]
            for j in range(burst):
                i = r * burst + j
                scaled, raw = feeds[i % len(feeds)]
                feed = scaled if needs_scaled else raw
                started = time.perf_counter()
                call(feed)
                elapsed = time.perf_counter() - started
                if warmup <= i < warmup + n:
                    times[name].append(elapsed)
    result = {}
    for name, values in times.items():
        ms = sorted(1e3 * v for v in values)
        result[name] = {"p50_ms": statistics.median(ms), "p95_ms": ms[int(0.95 * (len(ms) - 1))], "n": len(ms)}
    # The spread of the speed-up over torch: the measured calls cut into `blocks` consecutive blocks (the load
    # changes between them, equally for every engine), the p50 ratio computed in each.
    if "torch_fp32" in times and blocks > 1:
        size = n // blocks
        for name in names:
            if name == "torch_fp32":
                continue
            ratios = sorted(statistics.median(times["torch_fp32"][b * size:(b + 1) * size])
                            / statistics.median(times[name][b * size:(b + 1) * size]) for b in range(blocks))
            result[name]["speedup_vs_torch"] = {
                "overall_p50": result["torch_fp32"]["p50_ms"] / result[name]["p50_ms"], "blocks": blocks,
                "block_min": ratios[0], "block_median": statistics.median(ratios), "block_max": ratios[-1]}
    return result


def sizes(dirs: dict[str, Path]) -> dict[str, int]:
    return {name: (run / ("model.safetensors" if name == "torch_fp32" else "model.onnx")).stat().st_size
            for name, run in dirs.items()}


def accuracy(dirs: dict[str, Path]) -> dict[str, dict]:
    import dlforge

    out = {}
    for name, run in dirs.items():
        metrics = dlforge.evaluate(run, runtime="torch" if name == "torch_fp32" else "onnx")
        out[name] = {k: metrics[k] for k in ("accuracy", "roc_auc") if k in metrics}
    return out


def image_feeds(run: Path, rows: int = 64) -> list[tuple[dict, dict]]:
    """Real test images, one per feed: (scaled for torch, pixels 0..255 for the graphs that scale)."""
    import dlforge
    from dlforge.compress.rows import encode_rows, evaluation_rows

    predictor = dlforge.load(run, runtime="torch")
    _, table = evaluation_rows(predictor, rows)
    scaled, _ = encode_rows(predictor, table, scaled=True)
    raw, _ = encode_rows(predictor, table, scaled=False)
    return [({k: v[i:i + 1].numpy() for k, v in scaled.items()}, {k: v[i:i + 1].numpy() for k, v in raw.items()})
            for i in range(len(next(iter(scaled.values()))))]


def token_feeds(run: Path, rows: int = 64, length: int | None = None) -> list[tuple[dict, dict]]:
    """Test sentences, one per feed, trimmed to their real length; or `length` tokens of real text repeated."""
    import dlforge
    from dlforge.compress.rows import encode_rows, evaluation_rows

    predictor = dlforge.load(run, runtime="torch")
    _, table = evaluation_rows(predictor, rows)
    x, _ = encode_rows(predictor, table)
    name = next(iter(x))
    ids = x[name].numpy().astype(np.int64)
    feeds = []
    for row in ids:
        real = row[row != 0]
        if length is not None:
            body = real[1:-1] if len(real) > 2 else real
            real = np.concatenate([real[:1], np.resize(body, length - 2), real[-1:]])
        feed = {name: real[None, :].copy()}
        feeds.append((feed, feed))
    return feeds


def bench_model(run: Path, modes: list[str], feeds_of, args) -> dict:
    dirs = prepare(run, modes)
    calls = engines(dirs, args.threads)
    result = {"sizes_bytes": sizes(dirs)}
    for label, feeds in feeds_of(run).items():
        load = os.getloadavg()[0]
        result[f"latency_{label}"] = interleaved(calls, feeds, args.n, args.warmup, args.blocks, args.burst)
        result[f"latency_{label}"]["load_1min"] = [load, os.getloadavg()[0]]
        print(label, json.dumps(result[f"latency_{label}"], indent=1), flush=True)
    if not args.skip_accuracy:
        result["metrics"] = accuracy(dirs)
        print(json.dumps(result["metrics"]), flush=True)
    return result


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used (/proc/PID/stat fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rows_served(port: int) -> float:
    import httpx

    text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    return sum(float(line.split()[1]) for line in text.splitlines() if line.startswith("dlforge_batch_size_sum"))


def serve_bench(run: Path, seconds: float, threads: int, port: int, pairs: int = 2, wrk: bool = False) -> dict:
    """`pairs` x (torch, onnx) servers in turn, each under the closed-loop load at concurrency 32. Besides
    requests/s and latency: the server process's CPU milliseconds per request (user + system over warm-up and
    measurement, divided by the rows it served), which the machine's load does not inflate the way it does wall time.
    `wrk`: each server is then also measured under wrk's load (serve.py's run_wrk), reported beside under `wrk`."""
    import httpx

    import serve as serve_bench_module

    records = serve_bench_module.mnist_records(256)
    requests = [serve_bench_module.http_request(r) for r in records]
    out = {}
    for runtime in ("torch", "onnx") * pairs:  # alternating: load drifts
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
        process = subprocess.Popen([sys.executable, "-m", "dlforge.cli", "serve", str(run), "--port", str(port),
                                    "--threads", str(threads), "--max-queue", "1024", "--runtime", runtime],
                                   env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.2)
            served = httpx.get(f"http://127.0.0.1:{port}/v1/model").json()["serving"]["runtime"]["name"]
            load = os.getloadavg()[0]
            cpu, rows = _cpu_seconds(process.pid), _rows_served(port)
            point = serve_bench_module.run_load(port, requests, 32, seconds, warmup=2.0)
            cpu, rows = _cpu_seconds(process.pid) - cpu, _rows_served(port) - rows
            point["server_cpu_ms_per_request"] = round(cpu * 1e3 / max(rows, 1), 3)
            point["load_1min"] = load
            point["runtime_served"] = served
            out.setdefault(runtime, []).append(point)
            print(runtime, json.dumps(point), flush=True)
            if wrk:
                cpu, rows = _cpu_seconds(process.pid), _rows_served(port)
                point = serve_bench_module.run_wrk(port, records, 32, seconds, warmup=2.0)
                cpu, rows = _cpu_seconds(process.pid) - cpu, _rows_served(port) - rows
                point["server_cpu_ms_per_request"] = round(cpu * 1e3 / max(rows, 1), 3)
                point["load_1min"] = os.getloadavg()[0]
                out.setdefault("wrk", {}).setdefault(runtime, []).append(point)
                print(runtime, "wrk", json.dumps(point), flush=True)
        finally:
            process.terminate()
            process.wait(30)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cnn", type=Path, help="An MNIST CNN run (recipes/mnist_cnn.yaml).")
    parser.add_argument("--text", type=Path, help="A MiniLM text classifier run (recipes/text_minilm.yaml).")
    parser.add_argument("--effnet", type=Path, help="An EfficientNet-Lite0 transfer run (recipes/transfer_effnet.yaml).")
    parser.add_argument("--burst", type=int, default=20, help="Consecutive calls per engine before the next one "
                        "(1: call by call, the order of earlier rounds' figures).")
    parser.add_argument("--blocks", type=int, default=10, help="Blocks the measured calls are cut into for the spread.")
    parser.add_argument("--threads", type=int, default=1, help="torch and onnxruntime intra-op threads.")
    parser.add_argument("--n", type=int, default=400, help="Measured calls per engine.")
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--serve-seconds", type=float, default=0.0, help="0 skips the serving benchmark.")
    parser.add_argument("--serve-pairs", type=int, default=2, help="(torch, onnx) server pairs, alternating.")
    parser.add_argument("--serve-wrk", action="store_true", help="Also measure each server under wrk's load (a C "
                        "load generator that spends less CPU than the asyncio one; apt-get install wrk), reported beside.")
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument("--serve-only", action="store_true", help="Only the serving benchmark (needs --cnn).")
    parser.add_argument("--port", type=int, default=8793)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "compress.json")
    args = parser.parse_args()
    results = {"machine": machine(), "threads": args.threads, "n": args.n}
    print(json.dumps(results["machine"]), flush=True)
    if args.cnn and not args.serve_only:
        results["cnn"] = bench_model(args.cnn, ["static", "dynamic"], lambda run: {"batch1": image_feeds(run)}, args)
    if args.effnet:
        results["effnet"] = bench_model(args.effnet, ["static"], lambda run: {"batch1": image_feeds(run)}, args)
    if args.text:
        results["text"] = bench_model(args.text, ["dynamic"], lambda run: {
            "batch1_128_tokens": token_feeds(run, 32, length=128), "batch1_real_lengths": token_feeds(run, 64)}, args)
    if args.cnn and args.serve_seconds > 0:
        results["serve"] = serve_bench(args.cnn, args.serve_seconds, args.threads, args.port, args.serve_pairs,
                                       wrk=args.serve_wrk)
    results["machine"]["load_after"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
