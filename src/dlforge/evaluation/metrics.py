"""Metrics per output type, computed with torchmetrics from logits and encoded targets.

The names each type logs are `recipe.METRICS_BY_OUTPUT_TYPE` (checked by a test), so a recipe
can be validated against them before any data is read.
"""

from __future__ import annotations

import functools
from typing import Callable

import torch

from dlforge.core.registry import Registry
from dlforge.evaluation.ranking import metrics_from_ranks

metric_sets: Registry = Registry("metric set")


@functools.cache
def _torchmetrics():
    """torchmetrics' functional modules, imported on first use: importing torchmetrics pulls in
    transformers and scipy.signal (seconds), which prediction and serving never need."""
    from torchmetrics.functional import classification, regression

    return classification, regression


@metric_sets.register("category")
def category_metrics(logits: torch.Tensor, target: torch.Tensor, signature: dict, *, detail: bool = False) -> dict:
    C, _ = _torchmetrics()
    n = signature["size"]
    preds = logits.float().argmax(-1)
    out = {
        "accuracy": C.multiclass_accuracy(preds, target, n, average="micro"),
        "macro_precision": C.multiclass_precision(preds, target, n, average="macro"),
        "macro_recall": C.multiclass_recall(preds, target, n, average="macro"),
        "macro_f1": C.multiclass_f1_score(preds, target, n, average="macro"),
        "weighted_f1": C.multiclass_f1_score(preds, target, n, average="weighted"),
    }
    out = {k: float(v) for k, v in out.items()}
    if detail:
        labels = signature["labels"]
        per = [C.multiclass_precision(preds, target, n, average=None), C.multiclass_recall(preds, target, n, average=None),
               C.multiclass_f1_score(preds, target, n, average=None)]
        support = torch.bincount(target, minlength=n)
        out["per_class"] = {label: {"precision": float(per[0][i]), "recall": float(per[1][i]), "f1": float(per[2][i]),
                                    "support": int(support[i])} for i, label in enumerate(labels)}
        out["confusion_matrix"] = C.multiclass_confusion_matrix(preds, target, n).tolist()
    return out


@metric_sets.register("binary")
def binary_metrics(logits: torch.Tensor, target: torch.Tensor, signature: dict, *, detail: bool = False) -> dict:
    C, _ = _torchmetrics()
    prob = torch.sigmoid(logits.float().squeeze(-1))
    t = target.long()
    thr = signature.get("threshold", 0.5)
    out = {
        "accuracy": C.binary_accuracy(prob, t, threshold=thr),
        "precision": C.binary_precision(prob, t, threshold=thr),
        "recall": C.binary_recall(prob, t, threshold=thr),
        "f1": C.binary_f1_score(prob, t, threshold=thr),
        "roc_auc": C.binary_auroc(prob, t),
        "pr_auc": C.binary_average_precision(prob, t),
    }
    out = {k: float(v) for k, v in out.items()}
    if detail:
        out["confusion_matrix"] = C.binary_confusion_matrix(prob, t, threshold=thr).tolist()
        out["positive_label"] = signature["labels"][1]
    return out


@metric_sets.register("number")
def number_metrics(logits: torch.Tensor, target: torch.Tensor, signature: dict, *, detail: bool = False,
                   scale: float | Callable[[torch.Tensor], torch.Tensor] = 1.0) -> dict:
    """`scale`: the target's std, or a function mapping encoded values to the user's units (a log target)."""
    _, R = _torchmetrics()
    if callable(scale):
        pred, true = scale(logits.float().squeeze(-1)).float(), scale(target.float()).float()
    else:
        pred, true = logits.float().squeeze(-1) * scale, target.float() * scale
    return {"mae": float(R.mean_absolute_error(pred, true)),
            "rmse": float(R.mean_squared_error(pred, true).sqrt()),
            "r2": float(R.r2_score(pred, true)) if len(true) > 1 else float("nan")}


@metric_sets.register("multilabel")
def multilabel_metrics(logits: torch.Tensor, target: torch.Tensor, signature: dict, *, detail: bool = False) -> dict:
    """Micro/macro F1 with each label's own threshold, exact-set accuracy, and the fraction of wrong label bits."""
    C, _ = _torchmetrics()
    n = signature["size"]
    thresholds = torch.tensor(signature["thresholds"], device=logits.device)
    preds = (torch.sigmoid(logits.float()) >= thresholds).long()  # int predictions: torchmetrics skips its threshold
    t = target.long()
    out = {"micro_f1": float(C.multilabel_f1_score(preds, t, n, average="micro")),
           "macro_f1": float(C.multilabel_f1_score(preds, t, n, average="macro")),
           "subset_accuracy": float((preds == t).all(1).float().mean()),
           "hamming_loss": float((preds != t).float().mean())}
    if detail:
        f1 = C.multilabel_f1_score(preds, t, n, average=None)
        support = t.sum(0)
        out["per_label"] = {label: {"f1": float(f1[i]), "support": int(support[i]),
                                    "threshold": signature["thresholds"][i]} for i, label in enumerate(signature["labels"])}
    return out


@metric_sets.register("interaction")
def interaction_metrics(logits: torch.Tensor, target: torch.Tensor, signature: dict, *, detail: bool = False) -> dict:
    """Full ranking (evaluation/ranking.py): `logits` are (B, 2 + K) from a recommender in evaluation: the pair's
    score, the held-out item's rank among the user's unseen items, the user's top K item indices."""
    top = logits[:, 2:]
    n_items = int(signature.get("n_items") or (int(top.max()) + 1 if top.numel() else 1))
    return metrics_from_ranks(logits[:, 1], k=10, recall_k=50, top=top[:, :10], n_items=n_items)


def load_backend() -> None:
    """Import torchmetrics now (seconds: it pulls in scipy.signal), so the first evaluation in the timed loop
    does not pay for it and `train_seconds` counts training only."""
    _torchmetrics()


def compute_metrics(model, logits: dict[str, torch.Tensor], targets: dict[str, torch.Tensor], signature: dict,
                    *, detail: bool = False, scales: dict[str, float | Callable] | None = None) -> dict:
    """{"loss": ..., "accuracy": ...} for one output, or {"loss": ..., "<output>": {...}} flattened with several.

    Number outputs are scored in the user's units: `scales` maps their names to the target std, or to a function
    from encoded values to the user's units (`NumberTarget.to_units`, which also undoes a log transform).
    """
    with torch.no_grad():
        out: dict = {"loss": float(model.loss(logits, targets))}
        single = len(logits) == 1
        for name, head_logits in logits.items():
            sig = signature["outputs"][name]
            kwargs = {"scale": (scales or {}).get(name, 1.0)} if sig["type"] == "number" else {}
            values = metric_sets.get(sig["type"])(head_logits, targets[name], sig, detail=detail, **kwargs)
            if single:
                out.update(values)
            else:
                out[name] = {"loss": float(model.heads[name].loss(head_logits, targets[name])), **values}
    return out


def flatten(metrics: dict, prefix: str) -> dict[str, float]:
    """{"val.accuracy": 0.9, "val.label.f1": ...} — scalar metrics only, as logged in history."""
    flat = {}
    for key, value in metrics.items():
        if isinstance(value, dict) and key not in ("per_class", "per_label"):
            flat.update(flatten(value, f"{prefix}.{key}"))
        elif isinstance(value, (int, float)):
            flat[f"{prefix}.{key}"] = float(value)
    return flat
