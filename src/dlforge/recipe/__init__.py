"""The recipe schema: every field with its type, default, constraint and description.

This module is the single source of truth for what a recipe may say; `docs/recipe.md` is
generated from it (`dlforge recipe schema`). It imports nothing of dlforge but `core`, so that any
layer can read a recipe. Loading YAML with line numbers lives in `recipe/io.py`.
"""


import re
from collections.abc import Callable

from pydantic import Field, PrivateAttr, field_validator, model_validator

from dlforge.core.errors import did_you_mean
from dlforge.recipe._base import Strict, _field
from dlforge.recipe.data import DataConfig
from dlforge.recipe.encoders import BACKBONE_BLOCKS, Combiner, ConcatCombiner
from dlforge.recipe.evaluation import EvaluationConfig
from dlforge.recipe.federated import FederatedConfig, parse_partition
from dlforge.recipe.inputs import InputFeature
from dlforge.recipe.outputs import METRICS_BY_OUTPUT_TYPE, RENAMED_METRICS, OutputFeature
from dlforge.recipe.training import TrainingConfig
from dlforge.recipe.tune import TuneConfig, set_path, value_at

# The package is the schema's public surface: `from dlforge.recipe import ImageInput, Adam, ...` works for every
# section class, wherever it is defined.
from dlforge.recipe.data import *  # noqa: F403
from dlforge.recipe.encoders import *  # noqa: F403
from dlforge.recipe.evaluation import *  # noqa: F403
from dlforge.recipe.federated import *  # noqa: F403
from dlforge.recipe.inputs import *  # noqa: F403
from dlforge.recipe.outputs import *  # noqa: F403
from dlforge.recipe.training import *  # noqa: F403
from dlforge.recipe.tune import *  # noqa: F403

# ---------------------------------------------------------------- recipe
CrossCheck = Callable[["Recipe"], list[str]]
CROSS_CHECKS: list[CrossCheck] = []


def cross_check(func: CrossCheck) -> CrossCheck:
    """Register a rule between fields; returns the function (unlike Ludwig's decorator)."""
    CROSS_CHECKS.append(func)
    return func


class Recipe(Strict):
    """A whole experiment: data, inputs, outputs, model, training and evaluation."""

    name: str = _field("experiment", "Run name; the default output directory is runs/<name>. One folder name: at "
                       "most 100 characters, no '/' or '\\\\'.", min_length=1, max_length=100)
    data: DataConfig = Field(..., description="Where the rows come from and how they are split.")
    inputs: list[InputFeature] = Field(..., min_length=1, description="Model inputs, one per data column.")
    outputs: list[OutputFeature] = Field(..., min_length=1, description="Targets, one per data column.")
    combiner: Combiner = _field(ConcatCombiner(), "How encoded inputs are fused before the heads.")
    training: TrainingConfig = _field(TrainingConfig(), "Optimisation: epochs, batch, optimizer, schedule, regularisation.")
    evaluation: EvaluationConfig = _field(EvaluationConfig(), "After training: fairness by group, mitigation, calibration.")
    tune: TuneConfig | None = _field(None, "`dlforge tune`: the search space (recipe field path -> distribution), "
                                     "the metric, trials, sampler and pruner; `dlforge train` ignores it.")
    federated: FederatedConfig | None = _field(None, "Federated training across clients (`dlforge federate`, "
                                                     "docs/federated.md); `dlforge train` ignores it.")
    # Directory of the recipe file: relative data paths are also looked up there.
    _base_dir: str = PrivateAttr(".")

    @field_validator("name")
    @classmethod
    def _name_is_a_folder_name(cls, name: str) -> str:
        # The name becomes a directory (runs/<name>): file systems take 255 bytes, and a separator would nest it.
        if any(c in name for c in "/\\") or name in (".", "..") or not name.isprintable() or name != name.strip():
            raise ValueError(f"{name[:40]!r} is not a folder name: no '/', '\\', control characters, leading or "
                             "trailing spaces, '.' or '..'; e.g. my-experiment")
        if len(name.encode("utf-8")) > 200:
            raise ValueError(f"{len(name.encode('utf-8'))} bytes in UTF-8; a run name is at most 200 (a folder name)")
        return name

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

    def renamed_metric(self, metric: str) -> str:
        """`metric` under its current name: `val.f1` of a category output is `val.macro_f1` (the old, unlabelled
        name of the same macro average); any other name comes back unchanged."""
        parts = metric.split(".")
        if len(parts) < 2:
            return metric
        output = self.outputs[0] if len(parts) == 2 and len(self.outputs) == 1 else \
            next((o for o in self.outputs if len(parts) == 3 and o.name == parts[1]), None)
        new = RENAMED_METRICS.get(output.type, {}).get(parts[-1]) if output is not None else None
        return ".".join([*parts[:-1], new]) if new else metric

    @model_validator(mode="after")
    def _resolve_and_cross_check(self) -> "Recipe":
        # Resolved here, so the saved recipe says what happens: class proportions exist only for class targets,
        # and old metric names read as the new ones.
        if self.data.split.stratify and self.outputs[0].type not in ("category", "binary"):
            self.data.split = self.data.split.model_copy(update={"stratify": False})
        es, sched = self.training.early_stopping, self.training.schedule
        if es is not None and self.renamed_metric(es.metric) != es.metric:
            es.metric = self.renamed_metric(es.metric)
        if sched.name == "plateau" and self.renamed_metric(sched.metric) != sched.metric:
            sched.metric = self.renamed_metric(sched.metric)
        if self.tune is not None and self.renamed_metric(self.tune.metric) != self.tune.metric:
            self.tune.metric = self.renamed_metric(self.tune.metric)
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
def test_source_owns_the_test_split(recipe: Recipe) -> list[str]:
    split = recipe.data.split
    if recipe.data.test_source and split.test not in ("auto", "official"):
        return [f"data.split.test: {split.test} holds out rows for testing, but data.test_source already gives the "
                "test rows; remove data.split.test (or set it to auto), or drop test_source"]
    return []


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
    if getattr(comb, "history_layers", 0) and comb.dim % comb.history_heads:
        problems.append(f"combiner.history_heads: {comb.history_heads} does not divide dim {comb.dim}; "
                        f"use history_heads in {[h for h in range(1, 17) if comb.dim % h == 0]}")
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


@cross_check
def ngram_members_need_concat(recipe: Recipe) -> list[str]:
    """A text:ngram encoder with members K > 1 outputs one vector per member; only the concat combiner reads them."""
    comb, problems = recipe.combiner, []
    for f in recipe.inputs:
        k = getattr(getattr(f, "encoder", None), "members", 1) if f.type == "text" else 1
        if k == 1:
            continue
        if comb.name != "concat":
            problems.append(f"inputs.{f.name}.encoder.members: {k} members need combiner concat, not {comb.name}; "
                            "set combiner: {name: concat} or members: 1")
        elif comb.ensemble not in (1, k):
            problems.append(f"inputs.{f.name}.encoder.members: {k} members, but combiner.ensemble is "
                            f"{comb.ensemble}; make them equal (or ensemble: 1)")
    return problems


@cross_check
def evaluation_needs_class_output(recipe: Recipe) -> list[str]:
    """Fairness and calibration score class probabilities; mitigation by thresholds needs one binary output."""
    ev, first = recipe.evaluation, recipe.outputs[0]
    problems = []
    asks = [name for name, on in (("sensitive", ev.sensitive), ("calibrate", ev.calibrate)) if on]
    if asks and first.type not in ("category", "binary"):
        problems.append(f"evaluation.{asks[0]}: needs a binary or category first output; '{first.name}' is "
                        f"{first.type}; remove evaluation.{asks[0]}")
    if ev.mitigate is not None:
        if first.type != "binary":
            problems.append(f"evaluation.mitigate: group thresholds need a binary first output; '{first.name}' is "
                            f"{first.type}; remove evaluation.mitigate")
        if not ev.sensitive:
            problems.append("evaluation.mitigate: needs evaluation.sensitive (the groups to equalise), "
                            "e.g. sensitive: [sex]")
        inputs = {f.name: f.type for f in recipe.inputs}
        for column in ev.mitigate.by:
            if column not in ev.sensitive:
                problems.append(f"evaluation.mitigate.by: '{column}' is not in evaluation.sensitive "
                                f"({', '.join(ev.sensitive) or 'empty'})")
        for column in ev.mitigate.by or ev.sensitive:
            if inputs.get(column) != "category":
                what = f"a {inputs[column]} input" if column in inputs else "not a model input"
                problems.append(f"evaluation.mitigate: '{column}' is {what}; group thresholds are applied at predict "
                                f"time, so each group column must be a category input: add "
                                f"{{name: {column}, type: category}} to inputs, or set mitigate.by")
    dupes = sorted({c for c in ev.sensitive if ev.sensitive.count(c) > 1})
    problems += [f"evaluation.sensitive: '{c}' is listed twice" for c in dupes]
    outputs = {f.name for f in recipe.outputs}
    problems += [f"evaluation.sensitive: '{c}' is an output; a sensitive column describes the rows, not the target"
                 for c in ev.sensitive if c in outputs]
    return problems


@cross_check
def privacy_compatible(recipe: Recipe) -> list[str]:
    """DP-SGD clips and noises each example's gradient: settings that mix examples, or add gradients the clipping
    never sees, would void the guarantee silently, so they are refused here (docs/privacy.md)."""
    config = recipe.training
    if config.privacy is None:
        return []
    problems = []
    why = "training.privacy: DP-SGD"
    if config.accumulate > 1:
        problems.append(f"training.accumulate: {why} takes one noisy step per Poisson batch; set accumulate: 1 and "
                        "raise batch_size instead")
    if config.grad_clip is not None:
        problems.append(f"training.grad_clip: {why} clips each example's gradient to privacy.max_grad_norm; "
                        "remove grad_clip")
    if config.precision != "fp32":
        problems.append(f"training.precision: {why} computes per-example gradients in fp32; set precision: fp32")
    if config.compile:
        problems.append(f"training.compile: {why}'s per-example gradient hooks do not run under torch.compile; "
                        "set compile: false")
    if config.optimizer.lr == "auto":
        problems.append(f"training.optimizer.lr: auto runs a learning-rate range test on the training rows without "
                        f"noise, which {why}'s accountant does not count; give a rate")
    if config.baseline is True:
        problems.append(f"training.baseline: the non-private baselines would be trained on the same rows and their "
                        f"scores released beside the model, outside {why}'s budget; set baseline: false")
    if config.batch_size == "full":
        problems.append(f"training.batch_size: {why} samples batches (Poisson); give a number (e.g. 256)")
    reg = config.regularization
    for name in ("l1", "l2"):
        if getattr(reg, name):
            problems.append(f"training.regularization.{name}: the penalty's gradient would bypass {why}'s clipping; "
                            f"set it to 0 and use training.optimizer.weight_decay (applied after the noise)")
    if reg.dropconnect:
        problems.append(f"training.regularization.dropconnect: one weight mask shared by a batch has no per-example "
                        f"gradient rule in {why}; set dropconnect: 0 (dropout works)")
    for i, feature in enumerate(recipe.inputs):
        if getattr(getattr(feature, "encoder", None), "unfreeze_at_epoch", None) is not None:
            problems.append(f"inputs.{i}.encoder.unfreeze_at_epoch: {why} attaches its per-example gradient hooks to "
                            "the layers that train from the first step; unfreeze from the start (freeze: none or "
                            "until:<block>) or keep the backbone frozen")
        aug = getattr(feature, "augmentation", None)
        if aug is not None and (getattr(aug, "mixup", 0) or getattr(aug, "cutmix", 0)):
            problems.append(f"inputs.{i}.augmentation: mixup/cutmix mix two examples, so one example's gradient "
                            f"depends on another's and {why}'s per-example clipping no longer bounds it; set mixup: 0 "
                            "and cutmix: 0")
    for i, output in enumerate(recipe.outputs):
        for name in ("class_weights", "pos_weight"):
            if getattr(output, name, "none") != "none":
                problems.append(f"outputs.{i}.{name}: a weighted mean loss divides by the batch's total weight (and "
                                f"'balanced' reads the training labels' counts), which {why}'s per-example "
                                f"accounting does not cover; set {name}: none")
    return problems


@cross_check
def tune_space_fits_the_recipe(recipe: Recipe) -> list[str]:
    """Every `tune.space` path is a field of this recipe, and every value its distribution can give is valid there:
    both bounds (or every choice) are set into a copy of the recipe and validated, so a search never samples a
    recipe that `dlforge train` would refuse. The metric must be logged."""
    if recipe.tune is None:
        return []
    problems = _metric_problem("tune.metric", recipe.tune.metric, recipe)
    if not recipe.tune.metric.startswith("val."):
        problems.append(f"tune.metric: '{recipe.tune.metric}' is not a validation metric; a search scores each trial "
                        "on the validation split, e.g. val.loss or val.accuracy")
    data = recipe.model_dump(mode="json", exclude={"tune"})
    for path, dist in recipe.tune.distributions().items():
        where = f"tune.space.{path}"
        try:
            current = value_at(data, path)
        except KeyError as exc:
            problems.append(f"{where}: {exc.args[0]}")
            continue
        if dist.kind in ("uniform", "loguniform") and isinstance(current, int) and not isinstance(current, bool):
            problems.append(f"{where}: {path} takes whole numbers (it holds {current}) and {dist.kind}() gives "
                            f"fractions; use int({_whole(dist.low)}, {_whole(dist.high)}"
                            f"{', log=true' if dist.log else ''})")
            continue
        for value in dist.endpoints():
            trial = set_path(data, path, list(value) if isinstance(value, tuple) else value)
            try:
                Recipe.model_validate(trial)
            except ValueError as exc:  # pydantic's ValidationError is a ValueError
                errors = getattr(exc, "errors", lambda **_: [])(include_url=False)
                first = errors[0] if errors else {"msg": str(exc), "loc": ()}
                at = ".".join(str(p) for p in first.get("loc", ()) if not str(p).startswith(("function-", "[")))
                message = str(first.get("ctx", {}).get("error", first["msg"])).split("\n")[0]
                expected = str(first.get("ctx", {}).get("expected_tags") or first.get("ctx", {}).get("expected", ""))
                if expected and isinstance(value, str):
                    message += did_you_mean(value, re.findall(r"'([^']*)'", expected))
                problems.append(f"{where}: {dist.describe()} can give {value!r}, which the recipe refuses"
                                f"{f' at {at}' if at and at != path else ''}: {message}")
                break
    return problems


def _whole(value: float) -> int:
    return max(1, round(value))


@cross_check
def recommender_shape(recipe: Recipe) -> list[str]:
    """A recommendation recipe: one user id, one item id, one number (ratings) or interaction output, and a
    recommender combiner; id inputs and interaction outputs make sense nowhere else."""
    from dlforge.recipe.encoders import RECOMMENDER_COMBINERS

    ids = [f for f in recipe.inputs if f.type == "id"]
    recommender = recipe.combiner.name in RECOMMENDER_COMBINERS
    interaction = any(o.type == "interaction" for o in recipe.outputs)
    if not (ids or recommender or interaction):
        return (["training.refit: the refit on train + val is built for recommendation recipes (id inputs, a "
                 "recommender combiner); drop it, or pool the rows yourself (data.split.val: 0)"]
                if recipe.training.refit else [])
    problems = []
    roles = [f.role for f in ids]
    if sorted(roles) != ["item", "user"]:
        problems.append(f"inputs: a recommendation recipe needs one `type: id` input with role user and one with role "
                        f"item (found roles {roles or 'none'})")
    if not recommender:
        problems.append(f"combiner: id inputs need a recommender combiner ({', '.join(RECOMMENDER_COMBINERS)}), "
                        f"not '{recipe.combiner.name}'")
    if len(recipe.outputs) != 1 or recipe.outputs[0].type not in ("number", "interaction"):
        problems.append("outputs: a recommendation recipe has one output: type number (explicit ratings) or type "
                        "interaction (implicit feedback, ranked)")
    side = [f for f in recipe.inputs if f.type != "id"]
    untowered = [f.name for f in side if getattr(f, "tower", None) is None]
    if untowered:
        problems.append(f"inputs: side feature(s) {untowered[:5]} need `tower: user` or `tower: item` (only number, "
                        "category and binary side features are supported)")
    if side and recipe.combiner.name != "two_tower":
        problems.append(f"combiner: {recipe.combiner.name} uses only the ids; side features ({side[0].name}, ...) need "
                        "combiner two_tower, or drop them")
    if getattr(recipe.combiner, "history", 0) and recipe.data.split.leave_last_out is None:
        problems.append("combiner.history: a sequence-aware user needs the interactions' order: set "
                        "data.split.leave_last_out {user, time} (its time column orders each user's history)")
    comb = recipe.combiner
    if getattr(comb, "history_ratings", False) and not (comb.history and recipe.outputs
                                                         and recipe.outputs[0].type == "number"):
        problems.append("combiner.history_ratings: reads the ratings of the user's history, so it needs history > 0 "
                        "and a number (rating) output; set history: 10, or drop history_ratings")
    if getattr(comb, "transitions", 0) and not (comb.history and recipe.outputs
                                                 and recipe.outputs[0].type == "interaction"):
        problems.append("combiner.transitions: the Markov-chain term reads the user's recent items and ranks them, so "
                        "it needs history > 0 (e.g. 10) and an interaction output; set history, or drop transitions")
    if recipe.training.refit and recipe.training.cross_fit > 1:
        problems.append("training.refit: cross_fit already trains on the val rows; use one of the two")
    if getattr(comb, "history_layers", 0) and not comb.history:
        problems.append("combiner.history_layers: the blocks run over the history; set history > 0 (e.g. 10)")
    for i, f in enumerate(ids):
        if f.role == "user" and f.duplicates != "last":
            problems.append(f"inputs.{i}.duplicates: set the duplicates policy on the item id input")
    return problems


@cross_check
def federated_partition_fits_target(recipe: Recipe) -> list[str]:
    fed = recipe.federated
    if fed is None:
        return []
    problems = []
    scheme, _ = parse_partition(fed.partition)
    if scheme in ("shards", "dirichlet") and recipe.outputs[0].type not in ("category", "binary"):
        problems.append(f"federated.partition: {scheme} splits the rows by class, and the target "
                        f"'{recipe.outputs[0].name}' is a {recipe.outputs[0].type}; use iid or by:<column>")
    if fed.client_dp is not None and fed.client_dp.delta >= 1 / fed.clients:
        problems.append(f"federated.client_dp.delta: {fed.client_dp.delta:g} is not below 1 / clients "
                        f"({1 / fed.clients:.3g}): a guarantee that lets one client in {fed.clients} leak; "
                        f"use delta <= {0.1 / fed.clients:.1g}")
    return problems
