"""dlforge: one declarative recipe from a dataset to a trained, evaluated and served model.

The public API, and nothing else:

    run = dlforge.train("recipes/mnist_cnn.yaml", out="runs/cnn")
    predictor = dlforge.load("runs/cnn")
    predictor.predict(["digit.png"])
"""

__version__ = "0.1.0"

from dlforge.artifact import Predictor, load  # noqa: E402
from dlforge.errors import (ArtifactError, DataError, DlforgeError, PredictError, RecipeError,  # noqa: E402
                            TrainingInterrupted)
from dlforge.recipe import Recipe  # noqa: E402
from dlforge.recipe_io import load_recipe  # noqa: E402
from dlforge.run import RunResult, evaluate, lr_find, plan, train  # noqa: E402

__all__ = ["ArtifactError", "Client", "DataError", "DlforgeError", "PredictError", "Predictor", "Recipe", "RecipeError",
           "RunResult", "TrainingInterrupted", "evaluate", "load", "load_recipe", "lr_find", "plan", "train"]


def __getattr__(name):
    if name == "Client":  # lazy: the client needs httpx (the `serve` extra), the core does not
        from dlforge.serve.client import Client

        return Client
    raise AttributeError(f"module 'dlforge' has no attribute {name!r}")
