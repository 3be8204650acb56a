"""The recipe schema: every field with its type, default, constraint and description.

This module is the single source of truth for what a recipe may say; `docs/recipe.md` is
generated from it (`dlforge recipe schema`). It imports nothing of dlforge but `core`, so that any
layer can read a recipe. Loading YAML with line numbers lives in `recipe/io.py`.
"""


from collections.abc import Callable

from pydantic import Field, PrivateAttr, model_validator

from dlforge.core.errors import did_you_mean
from dlforge.recipe._base import Strict, _field
from dlforge.recipe.data import DataConfig
from dlforge.recipe.encoders import BACKBONE_BLOCKS, Combiner, ConcatCombiner
from dlforge.recipe.inputs import InputFeature
from dlforge.recipe.outputs import METRICS_BY_OUTPUT_TYPE, OutputFeature
from dlforge.recipe.training import TrainingConfig

# The package is the schema's public surface: `from dlforge.recipe import ImageInput, Adam, ...` works for every
# section class, wherever it is defined.
from dlforge.recipe.data import *  # noqa: F403
from dlforge.recipe.encoders import *  # noqa: F403
from dlforge.recipe.inputs import *  # noqa: F403
from dlforge.recipe.outputs import *  # noqa: F403
from dlforge.recipe.training import *  # noqa: F403

# ---------------------------------------------------------------- recipe
CrossCheck = Callable[["Recipe"], list[str]]
CROSS_CHECKS: list[CrossCheck] = []


def cross_check(func: CrossCheck) -> CrossCheck:
    """Register a rule between fields; returns the function (unlike Ludwig's decorator)."""
    CROSS_CHECKS.append(func)
    return func


class Recipe(Strict):
    """A whole experiment: data, inputs, outputs, model and training."""

    name: str = _field("experiment", "Run name; the default output directory is runs/<name>.", min_length=1)
    data: DataConfig = Field(..., description="Where the rows come from and how they are split.")
    inputs: list[InputFeature] = Field(..., min_length=1, description="Model inputs, one per data column.")
    outputs: list[OutputFeature] = Field(..., min_length=1, description="Targets, one per data column.")
    combiner: Combiner = _field(ConcatCombiner(), "How encoded inputs are fused before the heads.")
    training: TrainingConfig = _field(TrainingConfig(), "Optimisation: epochs, batch, optimizer, schedule, regularisation.")
    # Directory of the recipe file: relative data paths are also looked up there.
    _base_dir: str = PrivateAttr(".")

    def logged_metrics(self) -> list[str]:
        """Every metric name training logs, e.g. 'val.accuracy' (or 'val.<output>.accuracy' with several outputs)."""
        names = ["train.loss", "val.loss"]
        for out in self.outputs:
            prefix = "" if len(self.outputs) == 1 else f"{out.name}."
            for metric in METRICS_BY_OUTPUT_TYPE[out.type]:
                if metric == "loss" and not prefix:
                    continue
                names.append(f"val.{prefix}{metric}")
        return names

    @model_validator(mode="after")
    def _run_cross_checks(self) -> "Recipe":
        problems = [p for check in CROSS_CHECKS for p in check(self)]
        if problems:
            raise ValueError("\n".join(problems))
        return self


def _metric_problem(field: str, metric: str, recipe: Recipe) -> list[str]:
    logged = recipe.logged_metrics()
    if metric in logged:
        return []
    return [f"{field}: '{metric}' is not a logged metric{did_you_mean(metric, logged)} (logged: {', '.join(logged)})"]


@cross_check
def early_stopping_metric_is_logged(recipe: Recipe) -> list[str]:
    es = recipe.training.early_stopping
    return _metric_problem("training.early_stopping.metric", es.metric, recipe) if es else []


@cross_check
def plateau_metric_is_logged(recipe: Recipe) -> list[str]:
    sched = recipe.training.schedule
    return _metric_problem("training.schedule.metric", sched.metric, recipe) if sched.name == "plateau" else []


@cross_check
def feature_names_are_unique(recipe: Recipe) -> list[str]:
    names = [f.name for f in recipe.inputs] + [f.name for f in recipe.outputs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    return [f"inputs/outputs: column '{n}' is used more than once; each column is one input or one output" for n in dupes]


@cross_check
def nesterov_needs_momentum(recipe: Recipe) -> list[str]:
    opt = recipe.training.optimizer
    if opt.name == "sgd" and opt.nesterov and opt.momentum == 0:
        return ["training.optimizer.nesterov: needs training.optimizer.momentum > 0; set momentum (e.g. 0.9) or nesterov: false"]
    return []


@cross_check
def attention_heads_divide_width(recipe: Recipe) -> list[str]:
    problems = []
    for i, feature in enumerate(recipe.inputs):
        enc = getattr(feature, "encoder", None)
        if getattr(enc, "name", None) == "transformer" and enc.dim % enc.heads:
            problems.append(f"inputs.{i}.encoder.heads: {enc.heads} does not divide dim {enc.dim}; "
                            f"use heads in {[h for h in range(1, 17) if enc.dim % h == 0]}")
    comb = recipe.combiner
    if comb.name == "attention" and comb.dim % comb.heads:
        problems.append(f"combiner.heads: {comb.heads} does not divide dim {comb.dim}; "
                        f"use heads in {[h for h in range(1, 17) if comb.dim % h == 0]}")
    return problems


@cross_check
def freeze_block_exists(recipe: Recipe) -> list[str]:
    problems = []
    for i, feature in enumerate(recipe.inputs):
        encoder = getattr(feature, "encoder", None)
        blocks = BACKBONE_BLOCKS.get(getattr(encoder, "name", ""))
        if blocks and encoder.freeze.startswith("until:") and encoder.freeze[6:] not in blocks:
            guess = did_you_mean(encoder.freeze, [f"until:{b}" for b in blocks])
            problems.append(f"inputs.{i}.encoder.freeze: {encoder.name} has no block '{encoder.freeze[6:]}'{guess} "
                            f"(blocks: {', '.join(blocks)})")
    return problems


@cross_check
def mixing_needs_class_outputs(recipe: Recipe) -> list[str]:
    mixing = [i for i, f in enumerate(recipe.inputs)
              if f.type == "image" and f.augmentation is not None and (f.augmentation.mixup or f.augmentation.cutmix)]
    if mixing and any(o.type == "number" for o in recipe.outputs):
        return [f"inputs.{mixing[0]}.augmentation: mixup/cutmix mix the losses of class targets; a number output has no "
                "such mix — set mixup: 0 and cutmix: 0"]
    return []


@cross_check
def by_length_needs_text(recipe: Recipe) -> list[str]:
    if recipe.training.sampling == "by_length" and not any(f.type == "text" for f in recipe.inputs):
        return ["training.sampling: by_length groups rows by their token count, and no input is text; "
                "use sampling: random (or auto)"]
    return []


@cross_check
def ensemble_without_batch_norm(recipe: Recipe) -> list[str]:
    comb = recipe.combiner
    if comb.name == "concat" and comb.ensemble > 1 and comb.batch_norm:
        return ["combiner.batch_norm: an ensemble (combiner.ensemble > 1) shares its layers across members, and batch "
                "norm would mix their statistics; set batch_norm: false or ensemble: 1"]
    return []
