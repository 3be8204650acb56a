"""Evaluation: metrics per output type (torchmetrics) and plots."""

from dlforge.evaluation.metrics import compute_metrics, flatten, metric_sets

__all__ = ["compute_metrics", "flatten", "metric_sets"]
