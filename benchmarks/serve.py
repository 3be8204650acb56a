"""Serving benchmark: throughput and latency of `dlforge serve`, batching on vs off, plus a memory soak.

    PYTHONPATH=src DLFORGE_DATA=../shared/data python benchmarks/serve.py --scratch /tmp/dlforge-serve-bench

Trains (once, into --scratch, outside the repo) the MNIST seed CNN (1 epoch) and an adult income
model (2 epochs), then for each model and each batching setting starts a real server on 127.0.0.1
and drives it with a bounded closed-loop load generator (raw HTTP/1.1 keep-alive connections, so
the client spends little CPU): concurrency 1, 8, 32, 128, a fixed duration each, then it stops.
The HTTP overhead is the HTTP p50 at concurrency 1 minus the p50 of a direct `predict` call on the
same input in this process (same torch thread count). The soak runs the MNIST server at concurrency
32 for --soak-seconds and samples the server's RSS. Results go to stdout and --out (JSON).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CONCURRENCY = (1, 8, 32, 128)

MNIST = {
    "name": "mnist-cnn-serve",
    "data": {"source": "builtin:mnist", "split": {"val": 0.0, "test": "official", "seed": 0}},
    "inputs": [{"name": "image", "type": "image", "preprocessing": {"scale": "unit"},
                "encoder": {"name": "cnn", "channels": [32, 64], "kernel_size": 3, "padding": "valid",
                            "pool": "max", "dense": [128]}}],
    "outputs": [{"name": "label", "type": "category"}],
    "training": {"epochs": 1, "batch_size": 128, "optimizer": {"name": "adam", "lr": 1.0e-3}, "seed": 0},
}
ADULT_NUMBERS = ["age", "fnlwgt", "education_num", "capital_gain", "capital_loss", "hours_per_week"]
ADULT_CATEGORIES = ["workclass", "education", "marital_status", "occupation", "relationship", "race",
                    "native_country"]
ADULT = {
    "name": "adult-income-serve",
    "data": {"source": "builtin:adult", "split": {"val": 0.1, "test": "official", "seed": 0}},
    "inputs": [{"name": n, "type": "number"} for n in ADULT_NUMBERS]
    + [{"name": n, "type": "category"} for n in ADULT_CATEGORIES] + [{"name": "sex", "type": "binary"}],
    "outputs": [{"name": "income_gt_50k", "type": "binary"}],
    "combiner": {"name": "concat", "layers": [64, 32]},
    "training": {"epochs": 2, "batch_size": 256, "optimizer": {"name": "adam", "lr": 3.0e-3}, "seed": 0},
}


# ---------------------------------------------------------------- models and payloads
def train_once(recipe: dict, out: Path) -> dict:
    import dlforge

    if not (out / "model.safetensors").is_file():
        started = time.time()
        dlforge.train(recipe, out=out, overwrite=True, progress=False)
        print(f"trained {recipe['name']} in {time.time() - started:.0f} s", flush=True)
    return json.loads((out / "metrics.json").read_text())


def mnist_records(n: int) -> list[dict]:
    """Real MNIST test digits as PNG files, base64-encoded: what a client would upload."""
    import io

    from PIL import Image

    data = np.load(Path(os.environ["DLFORGE_DATA"]) / "mnist" / "mnist.npz")
    records = []
    for image in data["x_test"][:n]:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        records.append({"image": base64.b64encode(buffer.getvalue()).decode()})
    return records


def adult_records(n: int) -> list[dict]:
    import pandas as pd

    frame = pd.read_csv(Path(os.environ["DLFORGE_DATA"]) / "adult" / "test.csv.gz").head(n)
    return [{**{c: float(r[c]) for c in ADULT_NUMBERS}, **{c: str(r[c]) for c in ADULT_CATEGORIES},
             "sex": str(r["sex"])} for _, r in frame.iterrows()]


def http_request(record: dict) -> bytes:
    body = json.dumps({"records": [record]}).encode()
    head = (f"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    return head + body


# ---------------------------------------------------------------- the load generator
async def _read_response(reader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    await reader.readexactly(length)
    return status


async def _client(port: int, requests: list[bytes], stop_at: float, measure_from: float, latencies: list,
                  statuses: dict) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    i = random.randrange(len(requests))
    try:
        while time.perf_counter() < stop_at:
            i = (i + 1) % len(requests)
            started = time.perf_counter()
            writer.write(requests[i])
            try:
                status = await _read_response(reader)
            except (asyncio.IncompleteReadError, ConnectionError):
                status = 0
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            if started >= measure_from:
                latencies.append(time.perf_counter() - started)
                statuses[status] = statuses.get(status, 0) + 1
    finally:
        writer.close()


async def _load(port: int, requests: list[bytes], concurrency: int, seconds: float, warmup: float) -> dict:
    now = time.perf_counter()
    measure_from, stop_at = now + warmup, now + warmup + seconds
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    await asyncio.gather(*[_client(port, requests, stop_at, measure_from, latencies, statuses)
                           for _ in range(concurrency)])
    ok = statuses.get(200, 0)
    ms = sorted(latencies)
    return {"concurrency": concurrency, "requests": len(ms), "ok": ok, "errors": len(ms) - ok,
            "statuses": {str(k): v for k, v in sorted(statuses.items())},
            "throughput_rps": ok / seconds,
            "p50_ms": 1e3 * ms[len(ms) // 2] if ms else None,
            "p99_ms": 1e3 * ms[min(len(ms) - 1, int(len(ms) * 0.99))] if ms else None}


def run_load(port, requests, concurrency, seconds, warmup=1.0) -> dict:
    return asyncio.run(_load(port, requests, concurrency, seconds, warmup))


# ---------------------------------------------------------------- a second load generator: wrk (C)
# The asyncio client above spends ~0.05-0.07 ms of CPU per request (2-core AMD EPYC, benchmarks/compress.md round 11),
# a fifth of what the onnx server spends: on a busy machine the two compete for the same cores. wrk (Debian package
# `wrk`, written in C; the same closed loop: `concurrency` kept-alive connections, one request in flight on each)
# spends a fraction of that. Its figures are reported beside the asyncio client's, never instead of them.
WRK_SCRIPT = """
local bodies = {%s}
local requests, i = {}, 0
init = function(args)
  for n, body in ipairs(bodies) do
    requests[n] = wrk.format("POST", "/v1/predict", {["Content-Type"] = "application/json"}, body)
  end
  i = math.random(#requests)
end
request = function()
  i = i %% #requests + 1
  return requests[i]
end
done = function(summary, latency, requests)
  io.write(string.format("WRK_JSON {\\"requests\\": %%d, \\"seconds\\": %%f, \\"non2xx\\": %%d, \\"errors\\": %%d, "
    .. "\\"p50_ms\\": %%f, \\"p99_ms\\": %%f}\\n", summary.requests, summary.duration / 1e6, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50) / 1e3, latency:percentile(99) / 1e3))
end
"""


def run_wrk(port: int, records: list[dict], concurrency: int, seconds: float, warmup: float = 1.0) -> dict:
    """The closed-loop load of `run_load` from wrk (one thread): requests/s, p50/p99 and wrk's own CPU per request."""
    import resource
    import shutil
    import tempfile

    if shutil.which("wrk") is None:
        raise RuntimeError("wrk is not installed (Debian/Ubuntu: apt-get install wrk)")
    bodies = ", ".join(json.dumps(json.dumps({"records": [r]})) for r in records)  # Lua reads JSON's string escapes
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as handle:
        handle.write(WRK_SCRIPT % bodies)
    try:
        command = ["wrk", "-t1", f"-c{concurrency}", "-s", handle.name, f"http://127.0.0.1:{port}/v1/predict"]
        if warmup > 0:
            subprocess.run([*command[:3], f"-d{max(1, round(warmup))}s", *command[3:]], capture_output=True, check=True)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        done = subprocess.run([*command[:3], f"-d{max(1, round(seconds))}s", *command[3:]], capture_output=True,
                              text=True, check=True)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    finally:
        os.unlink(handle.name)
    line = next(line for line in done.stdout.splitlines() if line.startswith("WRK_JSON "))
    result = json.loads(line.removeprefix("WRK_JSON "))
    ok = result["requests"] - result["non2xx"]
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return {"client": "wrk", "concurrency": concurrency, "requests": result["requests"], "ok": ok,
            "errors": result["non2xx"] + result["errors"], "throughput_rps": ok / result["seconds"],
            "p50_ms": result["p50_ms"], "p99_ms": result["p99_ms"],
            "client_cpu_ms_per_request": round(cpu * 1e3 / max(result["requests"], 1), 4)}


# ---------------------------------------------------------------- the server under test
class Server:
    def __init__(self, run_dir: Path, port: int, *, max_batch: int, threads: int, max_wait_ms: float = 5.0):
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
        self.port = port
        self.process = subprocess.Popen(
            [sys.executable, "-m", "dlforge.cli", "serve", str(run_dir), "--port", str(port), "--threads",
             str(threads), "--max-batch", str(max_batch), "--max-wait-ms", str(max_wait_ms), "--max-queue", "1024"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        import httpx

        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self.process.poll() is not None:
                raise RuntimeError(self.process.stderr.read().decode()[-2000:])
            time.sleep(0.2)
        self.stop()
        raise RuntimeError("server did not become ready")

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def batch_totals(self) -> tuple[float, float]:
        """(rows, forward passes) so far, from the server's batch-size histogram."""
        import httpx

        text = httpx.get(f"http://127.0.0.1:{self.port}/metrics").text
        values = {line.split()[0]: float(line.split()[1]) for line in text.splitlines()
                  if line.startswith(("dlforge_batch_size_sum", "dlforge_batch_size_count"))}
        return values.get("dlforge_batch_size_sum", 0.0), values.get("dlforge_batch_size_count", 0.0)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()


def direct_p50_ms(run_dir: Path, record: dict, threads: int, n: int = 300) -> float:
    """A direct Predictor call on the same single record (image bytes decoded, as the server does)."""
    import torch

    import dlforge

    torch.set_num_threads(threads)
    predictor = dlforge.load(run_dir)
    data = {k: [base64.b64decode(v) if k == "image" else v] for k, v in record.items()}
    for _ in range(20):
        predictor.predict_details(data)
    times = []
    for _ in range(n):
        started = time.perf_counter()
        predictor.predict_details(data)
        times.append(time.perf_counter() - started)
    return 1e3 * statistics.median(times)


def _http_once(sock, request: bytes) -> int:
    sock.sendall(request)
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(int(line[15:]) for line in head.split(b"\r\n") if line[:15].lower() == b"content-length:")
    while len(body) < length:
        body += sock.recv(65536)
    return int(head[9:12])


def interleaved_overhead(run_dir: Path, record: dict, port: int, threads: int, n: int = 500) -> dict:
    """Direct predict and one HTTP request, alternated n times, so both see the same background load."""
    import socket

    import torch

    import dlforge

    torch.set_num_threads(threads)
    predictor = dlforge.load(run_dir)
    data = {k: [base64.b64decode(v) if k == "image" else v] for k, v in record.items()}
    request = http_request(record)
    server = Server(run_dir, port, max_batch=64, threads=threads)
    try:
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(50):
            predictor.predict_details(data)
            assert _http_once(sock, request) == 200
        direct, http = [], []
        for _ in range(n):
            started = time.perf_counter()
            predictor.predict_details(data)
            middle = time.perf_counter()
            status = _http_once(sock, request)
            http.append(time.perf_counter() - middle)
            direct.append(middle - started)
            assert status == 200
        sock.close()
    finally:
        server.stop()
    d50, h50 = 1e3 * statistics.median(direct), 1e3 * statistics.median(http)
    return {"n": n, "direct_p50_ms": d50, "http_p50_ms": h50, "overhead_p50_ms": h50 - d50}


# ---------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scratch", type=Path, default=Path("/tmp/dlforge-serve-bench"))
    parser.add_argument("--seconds", type=float, default=8.0, help="Measured seconds per point.")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the server (and the direct call).")
    parser.add_argument("--soak-seconds", type=float, default=300.0, help="0 skips the soak.")
    parser.add_argument("--port", type=int, default=8791)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "serve.json")
    args = parser.parse_args()
    args.scratch.mkdir(parents=True, exist_ok=True)

    models = {
        "mnist_cnn": (MNIST, args.scratch / "mnist_cnn", mnist_records(256)),
        "adult": (ADULT, args.scratch / "adult", adult_records(256)),
    }
    results: dict = {"cpus": os.cpu_count(), "threads": args.threads, "seconds_per_point": args.seconds,
                     "models": {}}
    for name, (recipe, run_dir, records) in models.items():
        metrics = train_once(recipe, run_dir)
        requests = [http_request(r) for r in records]
        entry = results["models"][name] = {"test": metrics.get("test"), "direct_p50_ms": None, "runs": {}}
        entry["direct_p50_ms"] = direct_p50_ms(run_dir, records[0], args.threads)
        for label, max_batch in (("batching_on", 64), ("batching_off", 1)):
            server = Server(run_dir, args.port, max_batch=max_batch, threads=args.threads)
            try:
                points = []
                for concurrency in CONCURRENCY:
                    rows_before, passes_before = server.batch_totals()
                    point = run_load(args.port, requests, concurrency, args.seconds)
                    rows, passes = server.batch_totals()
                    point["mean_batch_rows"] = (rows - rows_before) / max(passes - passes_before, 1)
                    points.append(point)
                    print(f"{name:10s} {label:13s} c={concurrency:<4d} {point['throughput_rps']:8.1f} req/s  "
                          f"p50 {point['p50_ms'] or 0:7.2f} ms  p99 {point['p99_ms'] or 0:7.2f} ms  "
                          f"statuses {point['statuses']}  mean batch {point['mean_batch_rows']:.1f}",
                          flush=True)
                entry["runs"][label] = points
            finally:
                server.stop()
        on, off = entry["runs"]["batching_on"], entry["runs"]["batching_off"]
        entry["speedup_c32"] = on[2]["throughput_rps"] / off[2]["throughput_rps"]
        entry["http_overhead_p50_ms_c1"] = on[0]["p50_ms"] - entry["direct_p50_ms"]
        entry["http_overhead_p50_ms_c1_batching_off"] = off[0]["p50_ms"] - entry["direct_p50_ms"]
        entry["interleaved"] = interleaved_overhead(run_dir, records[0], args.port, args.threads)
        print(f"{name}: interleaved direct p50 {entry['interleaved']['direct_p50_ms']:.3f} ms, HTTP p50 "
              f"{entry['interleaved']['http_p50_ms']:.3f} ms, overhead {entry['interleaved']['overhead_p50_ms']:.3f} ms",
              flush=True)
        print(f"{name}: batching speed-up at c=32 {entry['speedup_c32']:.2f}x; direct p50 "
              f"{entry['direct_p50_ms']:.3f} ms; HTTP overhead p50 at c=1 {entry['http_overhead_p50_ms_c1']:.2f} ms",
              flush=True)

    if args.soak_seconds > 0:
        _, run_dir, records = models["mnist_cnn"]
        requests = [http_request(r) for r in records]
        server = Server(run_dir, args.port, max_batch=64, threads=args.threads)
        try:
            run_load(args.port, requests, 32, 5.0, warmup=0.0)  # settle allocations before the first sample
            samples = [(0.0, server.rss_mb())]
            totals = {"requests": 0, "ok": 0, "errors": 0}
            started = time.monotonic()
            while time.monotonic() - started < args.soak_seconds:
                point = run_load(args.port, requests, 32, 30.0, warmup=0.0)
                for key in totals:
                    totals[key] += point[key]
                samples.append((round(time.monotonic() - started), server.rss_mb()))
                print(f"soak t={samples[-1][0]:4d} s  rss {samples[-1][1]:7.1f} MB  {point['throughput_rps']:7.1f} "
                      f"req/s  errors {point['errors']}", flush=True)
            results["soak"] = {"concurrency": 32, "seconds": args.soak_seconds, "rss_mb": samples, **totals,
                               "rss_start_mb": samples[0][1], "rss_end_mb": samples[-1][1],
                               "rss_max_mb": max(s[1] for s in samples)}
        finally:
            server.stop()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
