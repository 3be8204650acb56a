"""dlforge: one declarative recipe from a dataset to a trained, evaluated and served model.

The public API, and nothing else:

    run = dlforge.train("recipes/mnist_cnn.yaml", out="runs/cnn")
    predictor = dlforge.load("runs/cnn")
    predictor.predict(["digit.png"])

Names are imported on first use, so `import dlforge` (and `dlforge --help`) does not import torch.
"""

from __future__ import annotations

import importlib

from dlforge._version import __version__

# public name -> module that defines it
_EXPORTS = {
    "ArtifactError": "dlforge.core.errors", "DataError": "dlforge.core.errors", "DlforgeError": "dlforge.core.errors",
    "PredictError": "dlforge.core.errors", "RecipeError": "dlforge.core.errors",
    "TrainingInterrupted": "dlforge.core.errors",
    "Recipe": "dlforge.recipe", "load_recipe": "dlforge.recipe.io",
    "Predictor": "dlforge.artifact.predictor", "load": "dlforge.artifact.predictor",
    "RunResult": "dlforge.workflows.train", "train": "dlforge.workflows.train",
    "evaluate": "dlforge.workflows.evaluate", "plan": "dlforge.workflows.plan", "lr_find": "dlforge.workflows.lr_find",
    "cross_validate": "dlforge.workflows.cv", "init": "dlforge.workflows.init",
    "audit": "dlforge.audit",  # the package is callable too (see dlforge/audit/__init__.py)
    "explain": "dlforge.explain.api", "Explanation": "dlforge.explain.api",
    "permutation_importance": "dlforge.explain.importance",
    "Client": "dlforge.serve.client",  # needs httpx (the `serve` extra)
}

__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'dlforge' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return __all__
