"""Choose a DP recipe's settings on validation only: the test split is never scored.

Trains `recipes/mnist_dp.yaml` (or RECIPE) with 10% of the TRAINING rows held out as validation (the noise is
recalibrated by the accountant for the remaining rows, as in the real recipe), with `--set` overrides for the
variant under study, and keeps exponential moving averages of the weights at several decays beside the run
(post-processing: no privacy cost). Prints one JSON line per epoch: the raw weights' validation accuracy and
training loss, and every `--every` epochs (and at the end) each average's validation accuracy.

    python benchmarks/privacy_probe.py const --threads 1
    python benchmarks/privacy_probe.py cosine --threads 1 --set "training.schedule={name: cosine}"
    python benchmarks/privacy_probe.py symmetric --threads 1 --set inputs.0.preprocessing.scale=symmetric

The probes of benchmarks/privacy.md ("Choosing on validation") were run this way.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from dlforge.data import prepare
from dlforge.recipe.io import load_recipe, recipe_base_dir
from dlforge.training.setup import build_training

ROOT = Path(__file__).resolve().parents[1]


class AveragesOnValidation:
    """EMA shadows of the weights at several decays, scored on the validation split every `every` epochs."""

    def __init__(self, tag: str, decays: list[float], every: int):
        self.tag, self.decays, self.every, self.shadows = tag, decays, every, None

    def on_step_end(self, trainer, step):
        params = [p.detach() for p in trainer.model.parameters()]
        if self.shadows is None:
            self.shadows = {d: [p.clone() for p in params] for d in self.decays}
        for d, shadow in self.shadows.items():
            torch._foreach_lerp_(shadow, params, 1 - d)

    def on_epoch_end(self, trainer, epoch, metrics):
        out = {"tag": self.tag, "epoch": epoch + 1, "val_raw": metrics.get("val.accuracy"),
               "train_loss": metrics["train.loss"], "cpu": round(time.process_time(), 1)}
        if (epoch + 1) % self.every == 0 or epoch + 1 == trainer.config.epochs:
            params = list(trainer.model.parameters())
            saved = [p.detach().clone() for p in params]
            with torch.no_grad():
                for d, shadow in self.shadows.items():
                    for p, s in zip(params, shadow):
                        p.copy_(s)
                    out[f"val_ema{d}"] = trainer.evaluate(trainer.val)["accuracy"]
                for p, s in zip(params, saved):
                    p.copy_(s)
        print(json.dumps(out), flush=True)
        return False


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("tag", help="a name for this variant, printed on every line")
    ap.add_argument("--recipe", default=str(ROOT / "recipes" / "mnist_dp.yaml"))
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE")
    ap.add_argument("--val", type=float, default=0.1, help="share of the training rows held out (default 0.1)")
    ap.add_argument("--decays", default="0.99,0.995,0.998,0.999")
    ap.add_argument("--every", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    recipe = load_recipe(args.recipe, overrides=[f"data.split.val={args.val}", *args.overrides])
    prepared = prepare(recipe, base_dir=recipe_base_dir(recipe))
    print(json.dumps({"tag": args.tag, "overrides": args.overrides, "n_train": len(prepared.splits["train"]),
                      "n_val": len(prepared.splits["val"]), "test_scored": False}), flush=True)
    probe = AveragesOnValidation(args.tag, [float(d) for d in args.decays.split(",")], args.every)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = build_training(recipe, prepared, run_dir=Path(tmp), callbacks=[probe]).trainer
        result = trainer.fit()
    print(json.dumps({"tag": args.tag, "done": True, "last": result.history[-1]}), flush=True)


if __name__ == "__main__":
    main()
