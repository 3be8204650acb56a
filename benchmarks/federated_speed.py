"""CPU seconds of one McMahan round's parts (recipes/mnist_federated.yaml), before/after the channels-last layout,
interleaved in one process so both see the same machine load:

    python benchmarks/federated_speed.py --reps 2

A round = 10 clients' local training (600 rows, E = 5, B = 10: 300 steps each) + one test pass of the global model
(10,000 images). Prints one JSON line: CPU s per client fit and per test pass, each layout, and the per-step time.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from pathlib import Path

import torch

RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "mnist_federated.yaml"


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=2)
    args = parser.parse_args()
    os.environ.setdefault("DLFORGE_TRACKING", "off")
    torch.set_num_threads(1)
    import dlforge.federated.client as client
    from dlforge.federated.run import GlobalModel, load_setup

    setup = load_setup(RECIPE, ["training.threads=1"], progress=False)
    local = client.LocalTraining(setup.recipe, setup.prepared)
    server = GlobalModel(setup, Path(local.work_dir) / "server")
    weights, rows, test = server.initial(), setup.partition.clients[0], setup.prepared.splits["test"]
    real_layout = client.fast_layout
    steps = setup.recipe.federated.local_epochs * -(-len(rows) // setup.recipe.federated.batch_size)
    times: dict[str, list[float]] = {}
    load0 = os.getloadavg()
    for rep in range(args.reps):
        for name, layout, eval_batch in (("before (NCHW, eval batch 2048)", lambda m: m, 2048),
                                         ("after (channels-last, eval batch 256)", real_layout, 256)):
            client.fast_layout = layout
            c0 = cpu()
            local.fit(rows, weights, seed=rep)
            fit = cpu() - c0
            model = server.trainer.model
            model.to(memory_format=torch.channels_last if layout is real_layout else torch.contiguous_format)
            server.trainer.config.eval_batch_size = eval_batch
            c0 = cpu()
            server.trainer.evaluate(test)
            times.setdefault(name + " fit", []).append(fit)
            times.setdefault(name + " test pass", []).append(cpu() - c0)
    client.fast_layout = real_layout
    out = {k: [round(v, 2) for v in vs] for k, vs in times.items()}
    for name in ("before (NCHW, eval batch 2048)", "after (channels-last, eval batch 256)"):
        fit = min(times[name + " fit"])
        test_pass = min(times[name + " test pass"])
        out[name] = {"ms_per_step": round(1000 * fit / steps, 2), "cpu_s_per_round (10 fits + test pass)":
                     round(10 * fit + test_pass, 1)}
    out.update(cpu=torch.backends.cpu.get_cpu_capability(), load_before=load0, load_after=os.getloadavg(),
               time=time.strftime("%H:%M:%S"))
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
