"""Training callbacks: the hook contract and registry (base.py) and the built-in callbacks, one file each.

See base.py for the hooks, their order and how `training.callbacks` selects registered callbacks by name.
"""

from dlforge.training.callbacks.base import HOOKS, Callback, build_callbacks, callbacks, check_callbacks, resolve_hooks
from dlforge.training.callbacks.early_stopping import EarlyStopping, StopOnNaN
from dlforge.training.callbacks.ema import WeightAverage
from dlforge.training.callbacks.pruning import ReportToTrial
from dlforge.training.callbacks.progress import Progress, format_metrics
from dlforge.training.callbacks.tracking import MlflowTracking, default_tracking
from dlforge.training.callbacks.unfreeze import GradualUnfreeze

__all__ = ["HOOKS", "Callback", "EarlyStopping", "GradualUnfreeze", "MlflowTracking", "Progress", "ReportToTrial", "StopOnNaN", "WeightAverage",
           "build_callbacks",
           "callbacks", "check_callbacks", "default_tracking", "format_metrics", "resolve_hooks"]
