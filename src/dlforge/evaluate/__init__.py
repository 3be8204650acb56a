"""Evaluation: metrics per output type (torchmetrics) and plots."""

from dlforge.evaluate.metrics import compute_metrics, flatten, metric_sets

__all__ = ["compute_metrics", "flatten", "metric_sets"]
