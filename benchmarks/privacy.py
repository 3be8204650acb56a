"""DP-SGD's cost per epoch: the same model and data trained with and without training.privacy, side by side.

Builds both trainers through `build_training` (the path `dlforge train` uses) on one prepared copy of the data,
then runs single epochs alternately, `--rounds` times each, timing the fit with the process's CPU time (far less
sensitive than wall time to other users of a shared machine) and wall time. Prints one JSON line.

    python benchmarks/privacy.py recipes/mnist_dp.yaml --rounds 2 --threads 1

`--checkpoints RUN [RUN ...]` instead scores the latest checkpoint of each (possibly unfinished) run on its test
split, with the epochs done and the epsilon spent so far (from the checkpointed accountant): what a run that is
still training has reached.

    python benchmarks/privacy.py --checkpoints runs/mnist_dp_s0 runs/mnist_dp_s1

`--step-cost` times one optimizer step of mnist_dp's trainable network on random inputs of the expected Poisson
batch: the ScatterNet head (GroupNorm + Tramer & Boneh's tanh CNN on 81 x 7 x 7 scattering features, batch 1017:
the recipe now) and Papernot et al.'s tanh CNN on 28 x 28 pixels (batch 508: the recipe before). Plain SGD vs
dlforge's one-pass clipped sum (training/per_example.py, what training uses: ghost norms from Gram matrices where
they are cheaper, per-example gradients elsewhere) vs Opacus' hooks vs Opacus' functorch per-example gradients,
interleaved in one process (CPU ms per step; one JSON line per network).

    python benchmarks/privacy.py --step-cost
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from dlforge.data import prepare
from dlforge.recipe.io import load_recipe, recipe_base_dir
from dlforge.training.setup import build_training


def one_epoch(recipe, prepared, run_dir: Path) -> tuple[float, float]:
    recipe = recipe.model_copy(deep=True)
    recipe.training.epochs = 1
    # Fresh split objects each time: the frozen-feature cache replaces a split's inputs by their embeddings in place.
    splits = {k: dataclasses.replace(v, x=dict(v.x)) for k, v in prepared.splits.items()}
    trainer = build_training(recipe, prepared, run_dir=run_dir, splits=splits).trainer
    cpu, wall = time.process_time(), time.perf_counter()
    trainer.fit()
    return time.process_time() - cpu, time.perf_counter() - wall


@torch.no_grad()
def score_checkpoints(runs: list[str]) -> None:
    from dlforge.models import build_model
    from dlforge.training.checkpoint import load_checkpoint
    from dlforge.training.privacy import epsilon_spent

    prepared = None
    for run in runs:
        recipe = load_recipe(Path(run) / "recipe.yaml")
        if prepared is None:  # the runs share their data (seeds of one recipe)
            prepared = prepare(recipe, base_dir=recipe_base_dir(recipe))
        state = load_checkpoint(Path(run))
        model = build_model(recipe, prepared.signature())
        model.load_state_dict(state["model"])
        model.eval()
        test = prepared.splits["test"]
        (name, target), = test.y.items()
        hits = 0
        for start in range(0, len(test), 2048):
            logits = model({k: v[start:start + 2048] for k, v in test.x.items()})[name]
            hits += int((logits.argmax(1) == target[start:start + 2048]).sum())
        p, s = recipe.training.privacy, state.get("strategy") or {}
        eps = epsilon_spent(s["noise_multiplier"], s["sample_rate"], s["steps"], p.delta, p.accountant) if s else None
        print(json.dumps({"run": run, "epochs_done": state["epoch"], "finished": state.get("finished"),
                          "steps": s.get("steps"), "epsilon": eps, "test_accuracy": hits / len(test)}), flush=True)


def step_cost(steps: int = 10) -> None:
    """CPU ms per step: plain SGD vs DP-SGD (dlforge's clipper, Opacus' hooks, functorch), interleaved."""
    import warnings

    from opacus.grad_sample import GradSampleHooks
    from opacus.optimizers import DPOptimizer
    from torch import nn

    from dlforge.training import per_example

    warnings.filterwarnings("ignore")

    def scatter_head():  # recipes/mnist_dp.yaml's trainable part, as the scatter encoder builds it
        return nn.Sequential(nn.GroupNorm(27, 81, affine=False), nn.Conv2d(81, 16, 3, 2, padding=1), nn.Tanh(),
                             nn.Conv2d(16, 32, 3, 1, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(512, 32),
                             nn.Tanh(), nn.Linear(32, 10))

    def pixel_cnn():  # the recipe before (Papernot et al.'s tanh CNN), as the cnn encoder builds it
        return nn.Sequential(nn.Conv2d(1, 16, 8, 2, padding=3), nn.Tanh(), nn.MaxPool2d(2, 1), nn.Conv2d(16, 32, 4, 2),
                             nn.Tanh(), nn.MaxPool2d(2, 1), nn.Flatten(), nn.Linear(512, 32), nn.Tanh(),
                             nn.Linear(32, 10))

    networks = (("scatter_head", scatter_head, (1017, 81, 7, 7)), ("pixel_cnn", pixel_cnn, (508, 1, 28, 28)))
    for name, net, shape in networks:
        torch.manual_seed(0)
        x, y = torch.randn(shape), torch.randint(0, 10, (shape[0],))

        def run(mode: str, net=net, x=x, y=y) -> float:
            torch.manual_seed(0)
            model = net()
            opt = torch.optim.SGD(model.parameters(), lr=0.1)
            dp = dict(noise_multiplier=1.0, max_grad_norm=0.1, expected_batch_size=x.shape[0])
            if mode == "clipper":  # what dlforge uses: the clipped sum in one backward pass (training/per_example.py)
                opt = per_example.clipped_sum_optimizer(opt, per_example.PerExampleClipper(model), **dp)
            elif mode != "plain":
                GradSampleHooks(model, force_functorch=mode == "functorch")
                opt = DPOptimizer(opt, **dp)
            for i in range(steps + 2):
                if i == 2:
                    started = time.process_time()
                opt.zero_grad(set_to_none=True)
                nn.functional.cross_entropy(model(x), y).backward()
                opt.step()
            return (time.process_time() - started) / steps * 1000

        modes = ("plain", "clipper", "hooks", "functorch")
        out: dict[str, list[float]] = {m: [] for m in modes}
        for mode in modes * 2:
            out[mode].append(round(run(mode), 1))
        best = {k: min(v) for k, v in out.items()}
        print(json.dumps({"network": name, "batch": shape[0], "cpu_ms_per_step": out,
                          **{f"{m}_ratio": round(best[m] / best["plain"], 3) for m in modes[1:]}}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("recipe", nargs="?")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--checkpoints", nargs="+")
    parser.add_argument("--step-cost", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.step_cost:
        step_cost()
        return
    if args.checkpoints:
        score_checkpoints(args.checkpoints)
        return
    private = load_recipe(args.recipe)
    plain = private.model_copy(deep=True)
    plain.training.privacy = None
    prepared = prepare(private, base_dir=recipe_base_dir(private))
    times: dict[str, list[tuple[float, float]]] = {"dp": [], "plain": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for name, recipe in (("plain", plain), ("dp", private)) if r % 2 == 0 else (("dp", private), ("plain", plain)):
                times[name].append(one_epoch(recipe, prepared, Path(tmp) / f"{name}{r}"))
    cpu = {k: statistics.median(c for c, _ in v) for k, v in times.items()}
    wall = {k: min(w for _, w in v) for k, v in times.items()}
    print(json.dumps({"recipe": args.recipe, "rounds": args.rounds, "threads": args.threads,
                      "cpu_s_per_epoch": cpu, "best_wall_s_per_epoch": wall,
                      "cpu_ratio": round(cpu["dp"] / cpu["plain"], 3), "wall_ratio": round(wall["dp"] / wall["plain"], 3),
                      "all": times}))


if __name__ == "__main__":
    main()
