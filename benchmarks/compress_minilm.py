"""MiniLM at batch 1: torch eager fp32 against several onnx graphs of the same run, interleaved (compress.md round 7).

    OMP_NUM_THREADS=1 DLFORGE_TRACKING=off python benchmarks/compress_minilm.py RUN \
        ort_fp32=RUN ort_int8=RUN/variants/int8_dynamic [ort_int8_before=OTHER_DIR ...] [--calls 60] [--json FILE]

Each NAME=DIR is a run directory (or variant) with model.onnx + export.json; torch eager is RUN's model as
`benchmarks/compress.py` measures it (`engines`: the module under inference_mode, 1 thread). Two inputs: 128 tokens
of real test text (`token_feeds(RUN, 32, length=128)`) and the test sentences at their own lengths (64). Timing:
`compress.interleaved` (engines in bursts of 3, order rotating, 6 warm-up calls, 5 blocks for the spread of the
ratio), then a second pass of the same calls recording the calling thread's CPU time (time.thread_time): on a
loaded machine the wall time of a 1-thread call is inflated by the wait for a core, its CPU time much less so.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import compress as C  # noqa: E402


def cpu_times(calls: dict, feeds: list, n: int) -> dict[str, float]:
    """p50 thread CPU ms per engine, engines in turn (bursts of 3, order rotating), after 3 warm-up calls each."""
    names = list(calls)
    for fn, scaled in calls.values():
        for feed in feeds[:3]:
            fn(feed[0 if scaled else 1])
    times: dict[str, list[float]] = {k: [] for k in calls}
    for r in range(n // 3):
        names = names[1:] + names[:1]
        for name in names:
            fn, scaled = calls[name]
            for j in range(3):
                feed = feeds[(r * 3 + j) % len(feeds)][0 if scaled else 1]
                started = time.thread_time()
                fn(feed)
                times[name].append(time.thread_time() - started)
    return {k: statistics.median(v) * 1e3 for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path)
    parser.add_argument("graphs", nargs="+", help="NAME=DIR pairs (DIR: a run or variant with model.onnx)")
    parser.add_argument("--calls", type=int, default=60, help="measured calls per engine and input")
    parser.add_argument("--json", type=Path, default=None, help="append the results as one JSON line")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads for torch and onnxruntime")
    args = parser.parse_args()
    dirs = {"torch_fp32": args.run}
    for pair in args.graphs:
        name, _, folder = pair.partition("=")
        dirs[name] = Path(folder)
    calls = C.engines(dirs, args.threads)
    inputs = {"128_tokens": C.token_feeds(args.run, 32, length=128), "real_lengths": C.token_feeds(args.run, 64)}
    result = {"machine": C.machine(), "threads": args.threads, "dirs": {k: str(v) for k, v in dirs.items()}, "inputs": {}}
    for label, feeds in inputs.items():
        load = [os.getloadavg()[0]]
        wall = C.interleaved(calls, feeds, args.calls, 6, blocks=5, burst=3)
        cpu = cpu_times(calls, feeds, args.calls)
        load.append(os.getloadavg()[0])
        print(f"{label} (1-minute load {load[0]:.2f} -> {load[1]:.2f})")
        for name, row in wall.items():
            speed = row.get("speedup_vs_torch", {})
            spread = f" (blocks {speed['block_min']:.2f}-{speed['block_max']:.2f})" if speed else ""
            print(f"  {name:24s} wall p50 {row['p50_ms']:8.2f} ms x{wall['torch_fp32']['p50_ms'] / row['p50_ms']:5.2f}"
                  f"{spread}   thread CPU p50 {cpu[name]:8.2f} ms x{cpu['torch_fp32'] / cpu[name]:5.2f}")
            row["cpu_p50_ms"] = cpu[name]
        result["inputs"][label] = {"load": load, "engines": wall}
    if args.json:
        with args.json.open("a", encoding="utf-8") as out:
            out.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
