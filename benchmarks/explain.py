"""Integrated gradients through `dlforge.explain` vs Captum called by hand on the same model, side by side.

Cases (issue #14): the MNIST CNN on a batch of 64 test images, MiniLM on one sentence. Ways:
  dlforge        dlforge.explain(predictor, rows, method="integrated_gradients", sanity=False): encoding,
                 the prediction that picks the target, IG with its measured internal_batch_size, the
                 convergence delta, the per-pixel/per-token reduction
  dlforge+sanity the same with the default model-randomisation check (a second IG pass on a re-initialised copy)
  captum         by hand: encode, predict, IntegratedGradients (MNIST) / LayerIntegratedGradients on the word
                 embeddings (MiniLM, [MASK] reference with [CLS]/[SEP] kept), the same n_steps=50 and the same
                 internal_batch_size dlforge chose (recorded in a first dlforge call)

Each (case, way) run is its own subprocess (its peak RSS is its own), one untimed warm-up call then one timed
call; the runs are interleaved for --repeats rounds and the median is reported, with CPU time beside wall
time (the machine is shared; CPU time is the steadier figure under load).

    PYTHONPATH=src DLFORGE_DATA=../shared/data python benchmarks/explain.py --mnist RUN --minilm RUN --repeats 3
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


def child(case: str, way: str, run: str, batch: int | None) -> dict:
    import torch

    import dlforge

    torch.set_num_threads(1)
    predictor = dlforge.load(run)
    inputs = _case_inputs(case, predictor)
    base = _rss_mb()

    def call():
        if way == "captum":
            _captum_call(case, predictor, inputs, batch)
            return batch
        result = dlforge.explain(predictor, inputs, method="integrated_gradients", sanity=(way == "dlforge+sanity"),
                                 internal_batch_size=batch)
        return result.internal_batch_size

    chosen = call()  # warm-up: oneDNN kernels, first-use allocations
    wall, cpu = time.perf_counter(), time.process_time()
    call()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"case": case, "way": way, "wall_s": wall, "cpu_s": cpu, "peak_rss_growth_mb": peak - base,
            "internal_batch_size": chosen}


def _spawn(case: str, way: str, run: str, batch: int | None) -> dict:
    cmd = [sys.executable, __file__, "--child", case, way, run, str(batch or 0)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mnist", help="an MNIST CNN run (recipes/mnist_cnn.yaml)")
    parser.add_argument("--minilm", help="a MiniLM text run (recipes/text_minilm.yaml)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", nargs=4)
    args = parser.parse_args()
    if args.child:
        case, way, run, batch = args.child
        print(json.dumps(child(case, way, run, int(batch) or None)))
        return
    cases = [(c, r) for c, r in (("mnist", args.mnist), ("minilm", args.minilm)) if r]
    results: dict[tuple[str, str], list[dict]] = {}
    batches = {}
    for case, run in cases:  # dlforge's own choice of chunk size, given to the hand-written call too
        batches[case] = _spawn(case, "dlforge", run, None)["internal_batch_size"]
    for _ in range(args.repeats):
        for case, run in cases:
            for way in ("dlforge", "captum", "dlforge+sanity"):
                found = _spawn(case, way, run, batches[case])
                results.setdefault((case, way), []).append(found)
                print(json.dumps(found), flush=True)
    print("\ncase    way             wall s (median)  cpu s (median)  peak RSS growth MB  rows/chunk")
    for (case, way), runs in results.items():
        print(f"{case:<7} {way:<15} {statistics.median(r['wall_s'] for r in runs):>15.3f} "
              f"{statistics.median(r['cpu_s'] for r in runs):>15.3f} "
              f"{statistics.median(r['peak_rss_growth_mb'] for r in runs):>19.1f} {runs[0]['internal_batch_size']:>11}")
    for case, _ in cases:
        for unit in ("wall_s", "cpu_s"):
            d = statistics.median(r[unit] for r in results[(case, "dlforge")])
            c = statistics.median(r[unit] for r in results[(case, "captum")])
            print(f"{case}: dlforge / captum ({unit}) = {d / c:.3f}")


if __name__ == "__main__":
    main()
