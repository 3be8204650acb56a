"""Recipe section `outputs`: targets by type, and the metrics each type logs."""

from __future__ import annotations

from typing import Annotated, Callable, Literal, Union  # noqa: F401

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator  # noqa: F401

from dlforge.recipe._base import Strict, _field  # noqa: F401


class CategoryOutput(Strict):
    name: str = _field(..., "Target column.", min_length=1)
    type: Literal["category"] = "category"
    label_smoothing: float = _field(0.0, "Cross-entropy label smoothing.", ge=0.0, lt=1.0)
    class_weights: Literal["none", "balanced"] | dict[str, Annotated[float, Field(gt=0)]] = _field(
        "none", "'balanced' weighs classes by inverse training frequency; or a {label: weight} map."
    )
    loss_weight: float = _field(1.0, "Weight of this output's loss when there are several.", gt=0)


class BinaryOutput(Strict):
    name: str = _field(..., "Target column.", min_length=1)
    type: Literal["binary"] = "binary"
    positive: str | None = _field(None, "The value that means 1; null infers it.")
    threshold: float = _field(0.5, "Decision threshold on the positive probability.", gt=0.0, lt=1.0)
    pos_weight: Literal["none", "balanced"] | Annotated[float, Field(gt=0)] = _field(
        "none", "Weight of positive examples in the loss; 'balanced' uses negatives/positives."
    )
    loss_weight: float = _field(1.0, "Weight of this output's loss when there are several.", gt=0)


class NumberOutput(Strict):
    name: str = _field(..., "Target column.", min_length=1)
    type: Literal["number"] = "number"
    loss: Literal["mse", "mae", "huber"] = _field("mse", "Regression loss.")
    normalize: bool = _field(True, "Standardise the target on the training split (predictions are mapped back).")
    transform: Literal["none", "log"] = _field(
        "none", "log: train on log(1 + y) (a positive, right-skewed target such as a price or a count); predictions, "
        "metrics and served values are mapped back to the user's units. Needs y >= 0.")
    loss_weight: float = _field(1.0, "Weight of this output's loss when there are several.", gt=0)


class MultiLabelOutput(Strict):
    name: str = _field(..., "Target column: a set of labels per row ('a|b', 'a;b', 'a,b' or a JSON list).", min_length=1)
    type: Literal["multilabel"] = "multilabel"
    separator: Literal["auto", "|", ";", ",", "json", "single"] = _field(
        "auto", "How a cell lists its labels; auto detects it on the training split (one separator throughout).")
    threshold: float = _field(0.5, "Decision threshold on each label's sigmoid.", gt=0.0, lt=1.0)
    thresholds: dict[str, Annotated[float, Field(gt=0.0, lt=1.0)]] = _field(
        {}, "Per-label thresholds that override `threshold`, e.g. {rare_label: 0.3}.")
    loss_weight: float = _field(1.0, "Weight of this output's loss when there are several.", gt=0)


class InteractionOutput(Strict):
    name: str = _field(..., "Any column of the interaction table (e.g. rating): every row is one positive "
                            "(implicit feedback); the column's values are not used.", min_length=1)
    type: Literal["interaction"] = "interaction"
    loss: Literal["bpr", "softmax", "bce", "full_softmax"] = _field(
        "bpr", "bpr: pairwise log-sigmoid of positive minus negative (Rendle et al. 2009); softmax: sampled "
        "softmax over the positive and its negatives with the logQ correction (Yi et al. 2019); bce: binary "
        "cross-entropy, positive 1, negatives 0 (NeuMF's loss); full_softmax: cross-entropy over the whole "
        "catalogue (next-item prediction as in SASRec/BERT4Rec; no sampler, `negatives` unused; one (B x N) "
        "product per batch, fine up to ~100k items).")
    negatives: int = _field(4, "Negative items sampled per positive (never one of the user's training items).",
                            ge=1, le=1000)
    sampler: Literal["uniform", "popularity"] = _field(
        "uniform", "uniform over the catalogue, or proportional to training popularity ** popularity_alpha.")
    popularity_alpha: float = _field(0.75, "Exponent of the popularity sampler (word2vec's 0.75).", ge=0, le=1)
    sampled_negatives: str | None = _field(
        None, "A table of (user, item) rows, the same column names as the id inputs: the fixed negatives of the "
        "sampled protocol (1 held-out item + these); builtin:NAME/file works as data.source. null: full ranking only.")
    loss_weight: float = _field(1.0, "Weight of this output's loss when there are several.", gt=0)


OutputFeature = Annotated[Union[CategoryOutput, BinaryOutput, NumberOutput, MultiLabelOutput, InteractionOutput],
                          Field(discriminator="type")]

# Metrics each output type logs (evaluate/metrics.py computes exactly these; a test checks it).
METRICS_BY_OUTPUT_TYPE: dict[str, tuple[str, ...]] = {
    # Averages are named: macro (classes count equally), weighted (by support); micro is accuracy for one label per row.
    "category": ("loss", "accuracy", "macro_precision", "macro_recall", "macro_f1", "weighted_f1"),
    "binary": ("loss", "accuracy", "precision", "recall", "f1", "roc_auc", "pr_auc"),
    "number": ("loss", "mae", "rmse", "r2"),
    "multilabel": ("loss", "micro_f1", "macro_f1", "subset_accuracy", "hamming_loss"),
    # Full ranking of the held-out item among all items the user has not interacted with (evaluation/ranking.py).
    "interaction": ("loss", "hr@10", "ndcg@10", "recall@10", "recall@50", "mrr", "coverage@10"),
}
HIGHER_IS_BETTER = {"accuracy", "precision", "recall", "f1", "roc_auc", "pr_auc", "r2", "micro_f1", "macro_f1",
                    "subset_accuracy", "macro_precision", "macro_recall", "weighted_f1", "hr@10", "ndcg@10", "recall@10",
                    "recall@50", "mrr", "coverage@10"}
# Names a category output logged before the averages were named (runs on disk, recipes' early_stopping metric):
# a recipe that says `val.f1` for a category output is read as `val.macro_f1` (the same number), with a notice.
RENAMED_METRICS: dict[str, dict[str, str]] = {
    "category": {"f1": "macro_f1", "precision": "macro_precision", "recall": "macro_recall"},
}


