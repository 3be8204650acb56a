"""Cross-fit ensembles (`training.cross_fit` k > 1): k members, each early-stopped on its own fold, averaged.

On a small table a 10% validation share is a few dozen rows: early stopping and the restored epoch follow
their noise, and those rows never train. Cross-fitting (k-fold bagging, as AutoGluon does and as the
RealMLP and TabM benchmarks evaluate small sets) pools the training and validation rows, deals them into k
folds, and trains member i on every fold but i with fold i as its validation split. Every row trains (k-1 of
k members see it), every row helps choose an epoch, and the members' average is steadier than any one.

Each member is an ordinary training (`build_training`, its own checkpoint under checkpoint/fold_i), so a
killed run resumes: finished members reload, the interrupted one continues, the rest start. The run's `val`
metrics are out-of-fold: each pooled row is scored by the one member that did not train on it.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from dlforge.core.errors import TrainingInterrupted
from dlforge.data.prepare import Encoded, Prepared
from dlforge.data.split import fold_ids
from dlforge.evaluation.metrics import compute_metrics
from dlforge.models.model import FoldEnsemble
from dlforge.training.callbacks import build_callbacks
from dlforge.training.checkpoint import CHECKPOINT_DIR, has_checkpoint, load_checkpoint
from dlforge.training.setup import build_training, output_scales
from dlforge.training.trainer import Trainer, TrainResult


@dataclass
class CrossFit:
    """A finished cross-fit: the ensemble, a trainer that evaluates it, and what each member did."""

    model: FoldEnsemble
    trainer: Trainer
    result: TrainResult  # all members' epochs (history rows carry a `fold`), seconds summed
    members: list[TrainResult]
    splits: dict[str, Encoded]  # train: the pooled train+val rows; test as prepared
    out_of_fold: dict = field(default_factory=dict)  # metrics of the pooled rows, each scored by its held-out member


def member_dir(run_dir: Path, fold: int) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR / f"fold_{fold}"


def has_member_checkpoint(run_dir: Path) -> bool:
    """True when some member of a cross-fit run has checkpointed (what a resume can continue)."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    return folder.is_dir() and any(has_checkpoint(p) for p in folder.glob("fold_*") if p.is_dir())


def take(split: Encoded, rows: np.ndarray) -> Encoded:
    index = torch.as_tensor(rows, dtype=torch.long)
    return Encoded({k: v[index.to(v.device)] for k, v in split.x.items()},
                   {k: v[index.to(v.device)] for k, v in split.y.items()})


def pooled(splits: dict[str, Encoded]) -> Encoded:
    """The training rows followed by the validation rows (when there are any)."""
    parts = [splits["train"]] + ([splits["val"]] if "val" in splits and len(splits["val"]) else [])
    if len(parts) == 1:
        return parts[0]
    return Encoded({k: torch.cat([p.x[k] for p in parts]) for k in parts[0].x},
                   {k: torch.cat([p.y[k] for p in parts]) for k in parts[0].y})


def member_recipe(recipe, fold: int):
    """Member `fold`'s recipe: the run's, with its own seed (weights, shuffling, dropout)."""
    copy = recipe.model_copy(deep=True)
    copy.training.seed = (recipe.training.seed + fold) % 2**63
    return copy


def cross_fit(recipe, prepared: Prepared, *, run_dir: Path, resume: bool = False, callbacks=(),
              progress: bool = False, stop=None) -> CrossFit:
    """Train recipe.training.cross_fit members on the folds of the pooled train+val rows; see the module doc."""
    k = recipe.training.cross_fit
    pool = pooled(prepared.splits)
    first = recipe.outputs[0]
    labels = (pool.y[first.name].detach().cpu().numpy()
              if recipe.data.split.stratify and first.type in ("category", "binary") else None)
    ids = fold_ids(len(pool), labels, k, recipe.training.seed, where="training.cross_fit")
    signature = prepared.signature()
    members, results, trainers = [], [], []
    out_of_fold: dict[str, torch.Tensor] = {}
    for fold in range(k):
        if progress:
            print(f"cross-fit member {fold + 1} of {k}: {int((ids != fold).sum())} rows train, "
                  f"{int((ids == fold).sum())} validate", file=sys.stderr)
        mine = member_recipe(recipe, fold)
        held_out = take(pool, np.nonzero(ids == fold)[0])
        folder = member_dir(run_dir, fold)
        built = build_training(mine, prepared, run_dir=folder, callbacks=callbacks, progress=progress, stop=stop,
                               splits={"train": take(pool, np.nonzero(ids != fold)[0]), "val": held_out})
        state = load_checkpoint(folder, recipe=mine) if resume and has_checkpoint(folder) else None
        try:
            results.append(built.trainer.fit(state))
        except TrainingInterrupted:  # the member checkpointed; the run (not the member's folder) is what resumes
            raise TrainingInterrupted(str(run_dir)) from None
        trainers.append(built.trainer)
        members.append(built.model)
        rows = torch.as_tensor(np.nonzero(ids == fold)[0], dtype=torch.long)
        for name, logits in built.trainer.predict_logits(held_out).items():
            if name not in out_of_fold:
                out_of_fold[name] = torch.empty((len(pool), *logits.shape[1:]), dtype=logits.dtype, device=logits.device)
            out_of_fold[name][rows.to(logits.device)] = logits
    ensemble = FoldEnsemble(members)
    ensemble.eval()
    scales = output_scales(prepared)
    # Evaluates the ensemble (predict_logits, evaluate) and ends the run for the callbacks; it never trains.
    evaluator = Trainer(recipe, ensemble, pool, None, signature, run_dir=run_dir,
                        callbacks=[*build_callbacks(recipe), *callbacks], progress=False, scales=scales,
                        strategy=trainers[0].strategy, stop=stop)
    metrics = compute_metrics(ensemble, out_of_fold, pool.y, signature, detail=True, scales=scales)
    history = [{"fold": i, **row} for i, r in enumerate(results) for row in r.history]
    total = TrainResult(history=history, epochs_run=sum(r.epochs_run for r in results),
                        train_seconds=sum(r.train_seconds for r in results),
                        stopped_early=all(r.stopped_early for r in results), best_epoch=None)
    splits = {"train": pool, **({"test": prepared.splits["test"]} if "test" in prepared.splits else {})}
    return CrossFit(ensemble, evaluator, total, results, splits, metrics)


__all__ = ["CrossFit", "cross_fit", "has_member_checkpoint", "member_dir", "pooled"]
