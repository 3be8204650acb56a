"""`dlforge recipe check`: what training would do, without training."""

from __future__ import annotations

import torch

from dlforge.data import prepare
from dlforge.data.prepare import describe as describe_data
from dlforge.models import build_model, count_parameters
from dlforge.recipe.io import load_recipe, recipe_base_dir
from dlforge.training.feature_cache import cacheable
from dlforge.training.precision import check_precision, precision_notice
from dlforge.training.sampling import describe as describe_batching, length_inputs
from dlforge.training.strategy import default_device


def plan(recipe=None, overrides: list[str] | None = None, *, with_data: bool = True) -> dict:
    """What training would do, without training: the resolved recipe, features, parameters and steps."""
    recipe = load_recipe(recipe, overrides)
    check_precision(recipe.training.precision, default_device())  # what the trainer would refuse, refused now
    info: dict = {"recipe": recipe.model_dump(mode="json")}
    if not with_data:
        return info
    prepared = prepare(recipe, base_dir=recipe_base_dir(recipe))
    torch.manual_seed(recipe.training.seed)
    model = build_model(recipe, prepared.signature())
    n_train = len(prepared.splits["train"])
    batch = n_train if recipe.training.batch_size == "full" else min(recipe.training.batch_size, n_train)
    steps = -(-n_train // batch)
    info.update({"rows": prepared.report["rows"], "data": describe_data(prepared.report), "signature": prepared.signature(), "parameters": count_parameters(model),
                 "steps_per_epoch": steps, "total_steps": steps * recipe.training.epochs,
                 "policies": prepared.report["policies"], "model": str(model),
                 "backbones": cacheable(recipe, model)})
    batched_by = length_inputs(recipe, model, prepared.signature(),
                               has_tokens=lambda name: info["backbones"].get(name) != "cached")
    info["batches"] = describe_batching(batched_by, model)
    info["notices"] = [n for n in [precision_notice(recipe.training.precision, default_device())] if n]
    return info


def privacy_plan(recipe, overrides: list[str] | None = None):
    """The DP-SGD plan of a recipe (`dlforge privacy plan`): noise multiplier, sampling rate, steps and the epsilon
    spent after each epoch, from the recipe's data and model, without training. Refuses what training would refuse
    (a delta of 1/n or more, a hopeless or unreachable budget, BatchNorm) with the same messages."""
    from dlforge.core.errors import RecipeError
    from dlforge.training.privacy import plan_for

    recipe = load_recipe(recipe, overrides)
    if recipe.training.privacy is None:
        raise RecipeError("the recipe trains without privacy (training.privacy is not set)", where="training.privacy",
                          hint="add `privacy: {epsilon: 3, delta: 1.0e-5}` under training (docs/privacy.md)")
    prepared = prepare(recipe, base_dir=recipe_base_dir(recipe))
    return plan_for(recipe, prepared)
