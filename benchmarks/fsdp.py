"""FSDP2 against DDP on this machine: memory per process and seconds per step, the same global batch.

    PYTHONPATH=src DLFORGE_DATA=../shared/data DLFORGE_TRACKING=off python benchmarks/fsdp.py \
        [--recipe text_transformer] [--steps 10] [--rounds 2] [--out benchmarks/fsdp.json]

The model is recipes/text_transformer.yaml made bigger so that its state is worth sharding (width 256, 4 layers,
feed-forward 1024, 8,000 wordpieces: about 5.3 M parameters; AdamW keeps two more tensors per parameter). Each
configuration is a short torch.distributed.run job of the real training path (`dlforge train --nproc`'s workers in
probe mode, workflows/launch.py `probe`): data prepared, model built (and, under fsdp, sharded), one warm-up
step, then `--steps` timed steps; interleaved round-robin `--rounds` times:
  1     one process, 1 torch thread;   ddp   2 processes (gloo), 1 thread each;   fsdp  2 processes, FSDP2.
Reported per configuration: wall and CPU (all processes) ms per step, the best round; per rank, the MB of
parameters + gradients + optimizer state it holds (exact, from its tensors: its shards under fsdp) and its peak
resident memory (ru_maxrss: the whole process, torch, the tokenizer and the data included).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from scale import machine, timed_probe  # noqa: E402

BIGGER = ["inputs.0.encoder.dim=256", "inputs.0.encoder.layers=4", "inputs.0.encoder.ff_dim=1024",
          "inputs.0.encoder.heads=4", "training.batch_size=64"]
CONFIGS = {"1": (1, []), "ddp": (2, ["training.strategy=ddp"]), "fsdp": (2, ["training.strategy=fsdp"])}


def measure(recipe: str, steps: int) -> dict:
    from dlforge.workflows.launch import Job

    results = {}
    for label, (nproc, overrides) in CONFIGS.items():
        job = Job({"recipe": str(ROOT / "recipes" / f"{recipe}.yaml"), "overrides": [*BIGGER, *overrides],
                   "resume": None, "out": None, "quiet": True}, run_dir=None, recipe=None)
        timing = results[label] = timed_probe(job, nproc, 1, steps)
        print(f"  {label}: {timing['step_seconds'] * 1e3:.1f} ms/step, {timing['step_cpu_seconds'] * 1e3:.1f} ms CPU, "
              f"state MB per rank {timing['state_mb_per_rank']}, peak RSS MB {timing['max_rss_mb_per_rank']}, "
              f"load {timing['load_before']:.1f}", flush=True)
    return results


def summarize(rounds: list[dict]) -> dict:
    out = {}
    for label in CONFIGS:
        runs = [r[label] for r in rounds]
        out[label] = {"step_ms": round(min(r["step_seconds"] for r in runs) * 1e3, 1),
                      "cpu_ms_per_step": round(min(r["step_cpu_seconds"] for r in runs) * 1e3, 1),
                      "state_mb_per_rank": runs[0]["state_mb_per_rank"],
                      "max_rss_mb_per_rank": [max(r["max_rss_mb_per_rank"][i] for r in runs)
                                              for i in range(len(runs[0]["max_rss_mb_per_rank"]))],
                      "load": [r["load_before"] for r in runs]}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="text_transformer")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "fsdp.json")
    args = parser.parse_args()
    os.environ.setdefault("DLFORGE_TRACKING", "off")
    report = {"machine": machine(), "recipe": args.recipe, "overrides": BIGGER, "steps": args.steps,
              "rounds": args.rounds}
    print(json.dumps(report["machine"]), flush=True)
    rounds = []
    for i in range(args.rounds):
        print(f"round {i + 1}", flush=True)
        rounds.append(measure(args.recipe, args.steps))
    report["rounds"], report["summary"] = rounds, summarize(rounds)
    print(json.dumps(report["summary"]), flush=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
