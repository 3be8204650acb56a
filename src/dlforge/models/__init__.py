"""Models: encoder registry, combiner, heads, and the recipe's whole network."""

from dlforge.models.encoders import encoders
from dlforge.models.heads import heads
from dlforge.models.model import DlforgeModel, FoldEnsemble, build_model, build_saved_model, count_parameters

__all__ = ["DlforgeModel", "FoldEnsemble", "build_model", "build_saved_model", "count_parameters", "encoders",
           "heads"]
