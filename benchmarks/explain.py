"""Integrated gradients through `dlforge.explain` vs Captum called by hand on the same model, side by side.

Cases (issue #14): the MNIST CNN on a batch of 64 test images, MiniLM on one sentence. Ways:
  dlforge        dlforge.explain(predictor, rows, method="integrated_gradients", sanity=False): encoding,
                 the prediction that picks the target, IG with its measured internal_batch_size, the
                 convergence delta, the per-pixel/per-token reduction
  dlforge+sanity the same with the default model-randomisation check (a second IG pass on a re-initialised copy)
  captum         by hand: encode, predict, IntegratedGradients (MNIST) / LayerIntegratedGradients on the word
                 embeddings (MiniLM, [MASK] reference with [CLS]/[SEP] kept), the same n_steps=50 and the same
                 internal_batch_size dlforge chose (recorded in a first dlforge call)

Times: per case, one process warms each way up, then alternates the three ways for --rounds rounds (a load
burst on the shared machine hits all ways alike); medians of wall and CPU seconds, and the per-round CPU
ratio. Memory: each (case, way) alone in a fresh process, its peak RSS growth over the RSS after loading.

    PYTHONPATH=src DLFORGE_DATA=../shared/data python benchmarks/explain.py --mnist RUN --minilm RUN --rounds 5
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import numpy as np

SENTENCE = "a quietly devastating film about grief, told with patience and without easy answers"


def _rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _case_inputs(case: str, predictor):
    if case == "mnist":
        from dlforge.explain.importance import held_out_table

        return held_out_table(predictor).take(np.arange(64))
    return [SENTENCE]


def _captum_call(case: str, predictor, inputs, batch: int):
    import torch
    from captum.attr import IntegratedGradients, LayerIntegratedGradients

    model = predictor.model.eval()
    x = predictor.encode_inputs(inputs)
    if case == "mnist":
        def forward(images):
            return model({"image": images})["label"]

        images = x["image"]
        with torch.no_grad():
            target = forward(images).argmax(1)
        return IntegratedGradients(forward).attribute(images, baselines=torch.zeros_like(images), target=target,
                                                      n_steps=50, internal_batch_size=batch)
    ids = x["text"]
    ids = ids[:, : int((ids != 0).sum(1).max())]
    # The reference: every word replaced by [MASK] (103), [CLS]/[SEP] kept. dlforge swaps in the [PAD] embedding
    # at the embedding's output; by hand, [PAD] ids would shorten the sequence (the encoder trims padding), so a
    # by-hand caller uses another token. Same cost, a different reference.
    keep = torch.isin(ids, torch.tensor([0, 101, 102]))
    reference = torch.where(keep, ids, torch.full_like(ids, 103))

    def forward(token_ids):
        z = model({"text": token_ids})["label"]
        return torch.cat([-z, z], dim=-1)

    with torch.no_grad():
        target = (forward(ids)[:, 1] > 0).long()
    layer = model.encoders["text"].backbone.embeddings.word_embeddings
    return LayerIntegratedGradients(forward, layer).attribute(ids, baselines=reference, target=target, n_steps=50,
                                                              internal_batch_size=batch)


def _call(case: str, way: str, predictor, inputs, batch: int | None):
    import dlforge

    if way == "captum":
        _captum_call(case, predictor, inputs, batch)
        return batch
    result = dlforge.explain(predictor, inputs, method="integrated_gradients", sanity=(way == "dlforge+sanity"),
                             internal_batch_size=batch)
    return result.internal_batch_size


def child_memory(case: str, way: str, run: str, batch: int | None) -> dict:
    """One way alone in a fresh process: the growth of its peak RSS over the RSS after loading."""
    import torch

    import dlforge

    torch.set_num_threads(1)
    predictor = dlforge.load(run)
    inputs = _case_inputs(case, predictor)
    base = _rss_mb()
    chosen = _call(case, way, predictor, inputs, batch)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"case": case, "way": way, "peak_rss_growth_mb": peak - base, "internal_batch_size": chosen}


def child_time(case: str, run: str, rounds: int) -> dict:
    """The ways alternated in one process after a warm-up of each, `rounds` times: wall and CPU seconds each."""
    import torch

    import dlforge

    torch.set_num_threads(1)
    predictor = dlforge.load(run)
    inputs = _case_inputs(case, predictor)
    batch = _call(case, "dlforge", predictor, inputs, None)  # warm-up; the chunk size dlforge picks is used by all
    _call(case, "captum", predictor, inputs, batch)
    times: dict[str, dict[str, list[float]]] = {}
    for _ in range(rounds):
        for way in WAYS:
            wall, cpu = time.perf_counter(), time.process_time()
            _call(case, way, predictor, inputs, batch)
            entry = times.setdefault(way, {"wall_s": [], "cpu_s": []})
            entry["wall_s"].append(time.perf_counter() - wall)
            entry["cpu_s"].append(time.process_time() - cpu)
    return {"case": case, "internal_batch_size": batch, "times": times}


WAYS = ("dlforge", "captum", "dlforge+sanity")


def _spawn(*args) -> dict:
    cmd = [sys.executable, __file__, "--child", *map(str, args)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mnist", help="an MNIST CNN run (recipes/mnist_cnn.yaml)")
    parser.add_argument("--minilm", help="a MiniLM text run (recipes/text_minilm.yaml)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--child", nargs="+")
    args = parser.parse_args()
    if args.child:
        kind, *rest = args.child
        if kind == "time":
            print(json.dumps(child_time(rest[0], rest[1], int(rest[2]))))
        else:
            print(json.dumps(child_memory(rest[0], rest[1], rest[2], int(rest[3]) or None)))
        return
    cases = [(c, r) for c, r in (("mnist", args.mnist), ("minilm", args.minilm)) if r]
    print("case    way             wall s (median)  cpu s (median)  peak RSS growth MB  rows/chunk")
    ratios = []
    for case, run in cases:
        timed = _spawn("time", case, run, args.rounds)
        batch = timed["internal_batch_size"]
        for way in WAYS:
            memory = _spawn("memory", case, way, run, batch)
            t = timed["times"][way]
            print(f"{case:<7} {way:<15} {statistics.median(t['wall_s']):>15.3f} {statistics.median(t['cpu_s']):>15.3f} "
                  f"{memory['peak_rss_growth_mb']:>19.1f} {batch:>11}", flush=True)
        d, c = timed["times"]["dlforge"], timed["times"]["captum"]
        per_round = [a / b for a, b in zip(d["cpu_s"], c["cpu_s"])]
        ratios.append(f"{case}: dlforge / captum = {statistics.median(d['wall_s']) / statistics.median(c['wall_s']):.3f}"
                      f" (wall medians), {statistics.median(d['cpu_s']) / statistics.median(c['cpu_s']):.3f} (CPU "
                      f"medians); per round (CPU) {', '.join(f'{r:.3f}' for r in per_round)}")
    print("\n".join(ratios))


if __name__ == "__main__":
    main()
