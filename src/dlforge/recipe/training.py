"""Recipe section `training`: optimizers, schedules, regularisation, early stopping and the loop's options."""

from __future__ import annotations

from typing import Annotated, Callable, Literal, Union  # noqa: F401

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator  # noqa: F401

from dlforge.recipe._base import Strict, _field  # noqa: F401
from dlforge.recipe.outputs import HIGHER_IS_BETTER


def higher_is_better(metric: str) -> bool:
    """The one answer to "does a larger value of this logged metric mean better" (early stopping, plateau
    schedules, model selection): by its last part, so `val.accuracy` and `val.kind.f1` are, `val.loss` is not."""
    return metric.rsplit(".", 1)[-1] in HIGHER_IS_BETTER


LearningRate = Union[Annotated[float, Field(gt=0)], Literal["auto"]]
_AUTO_LR = " 'auto': run the learning-rate range test (dlforge lr-find) before training and use its suggestion."


class SGD(Strict):
    name: Literal["sgd"] = "sgd"
    lr: LearningRate = _field(0.01, "Learning rate (the peak rate under onecycle)." + _AUTO_LR)
    momentum: float = _field(0.9, "Momentum.", ge=0, lt=1)
    nesterov: bool = _field(False, "Nesterov momentum (needs momentum > 0).")
    weight_decay: float = _field(0.0, "L2 penalty added to the gradient.", ge=0)


class Adam(Strict):
    name: Literal["adam"] = "adam"
    lr: LearningRate = _field(1e-3, "Learning rate (the peak rate under onecycle)." + _AUTO_LR)
    betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = _field((0.9, 0.999), "Adam betas.")
    eps: float = _field(1e-8, "Numerical stability term.", gt=0)
    weight_decay: float = _field(0.0, "L2 penalty added to the gradient (coupled; use adamw for decoupled).", ge=0)


class AdamW(Adam):
    name: Literal["adamw"] = "adamw"  # type: ignore[assignment]
    weight_decay: float = _field(0.01, "Decoupled weight decay.", ge=0)


class Adagrad(Strict):
    name: Literal["adagrad"] = "adagrad"
    lr: LearningRate = _field(0.01, "Learning rate." + _AUTO_LR)
    lr_decay: float = _field(0.0, "Learning-rate decay.", ge=0)
    weight_decay: float = _field(0.0, "L2 penalty.", ge=0)


class RMSprop(Strict):
    name: Literal["rmsprop"] = "rmsprop"
    lr: LearningRate = _field(1e-3, "Learning rate." + _AUTO_LR)
    alpha: float = _field(0.99, "Smoothing constant.", gt=0, lt=1)
    momentum: float = _field(0.0, "Momentum.", ge=0, lt=1)
    centered: bool = _field(False, "Normalise by the estimated gradient variance.")
    weight_decay: float = _field(0.0, "L2 penalty.", ge=0)


Optimizer = Annotated[Union[SGD, Adam, AdamW, Adagrad, RMSprop], Field(discriminator="name")]


# ---------------------------------------------------------------- schedules
class _Warmup(Strict):
    warmup_epochs: float = _field(0.0, "Linear warm-up from 0 over this many epochs (fractions allowed).", ge=0)


class ConstantSchedule(_Warmup):
    name: Literal["constant"] = "constant"


class StepSchedule(_Warmup):
    name: Literal["step"] = "step"
    step_epochs: int = _field(5, "Multiply the rate by gamma every this many epochs.", ge=1)
    gamma: float = _field(0.1, "Factor applied at each step.", gt=0, le=1)


class CosineSchedule(_Warmup):
    name: Literal["cosine"] = "cosine"
    min_lr_ratio: float = _field(0.0, "Final rate as a fraction of the peak.", ge=0, le=1)


class OneCycleSchedule(Strict):
    name: Literal["onecycle"] = "onecycle"
    pct_start: float = _field(0.25, "Fraction of steps spent rising to the peak rate.", gt=0, lt=1)
    div_factor: float = _field(25.0, "Initial rate = peak / div_factor.", ge=1)
    final_div_factor: float = _field(1e4, "Final rate = initial / final_div_factor.", ge=1)


class PlateauSchedule(Strict):
    name: Literal["plateau"] = "plateau"
    metric: str = _field("val.loss", "Logged metric to watch.")
    factor: float = _field(0.1, "Multiply the rate by this when the metric stalls.", gt=0, lt=1)
    patience: int = _field(2, "Epochs without improvement before reducing.", ge=0)
    min_lr: float = _field(0.0, "Lower bound on the rate.", ge=0)


Schedule = Annotated[
    Union[ConstantSchedule, StepSchedule, CosineSchedule, OneCycleSchedule, PlateauSchedule], Field(discriminator="name")
]


# ---------------------------------------------------------------- training
class Regularization(Strict):
    l1: float = _field(0.0, "L1 penalty on weights (not biases or norms), added to the loss.", ge=0)
    l2: float = _field(0.0, "L2 penalty on weights (not biases or norms), added to the loss.", ge=0)
    dropout: float = _field(0.0, "Dropout after every hidden dense layer.", ge=0, lt=1)
    dropconnect: float = _field(0.0, "DropConnect (weight dropout) on every hidden dense layer.", ge=0, lt=1)


class EarlyStopping(Strict):
    metric: str = _field("val.loss", "Logged metric to watch, e.g. val.loss or val.accuracy.")
    mode: Literal["auto", "min", "max"] = _field("auto", "auto: max for accuracy-like metrics, min for losses/errors.")
    patience: int = _field(3, "Epochs without improvement before stopping.", ge=1)
    min_delta: float = _field(0.0, "Smallest change that counts as improvement.", ge=0)
    restore_best: bool = _field(True, "End with the weights of the best epoch.")


class CallbackSpec(BaseModel):
    """A callback chosen by name with its options, e.g. `{name: my_logger, every: 10}`.

    The options are the callback's keyword arguments; they are checked against its signature when training is
    built (the registry of callbacks lives in the training layer, which the recipe does not import).
    """

    model_config = ConfigDict(extra="allow")

    name: str = Field(..., min_length=1, description="Registered callback name (dlforge.training.callbacks).")

    def options(self) -> dict:
        return dict(self.model_extra or {})


class Privacy(Strict):
    """DP-SGD (Abadi et al. 2016) through Opacus: per-example gradients clipped to `max_grad_norm`, Gaussian noise
    calibrated so that the whole run spends at most (epsilon, delta). docs/privacy.md says what that protects."""

    epsilon: float = _field(..., "Privacy budget of the whole run (smaller is more private; 1-8 is usual). The noise "
                            "is calibrated so that training for training.epochs spends at most this; training stops "
                            "before a step that would exceed it.", gt=0, le=1000)
    delta: float = _field(1e-5, "Probability that the epsilon guarantee fails; must be below 1/n (n = training rows), "
                          "usually well below it (1e-5 for 60,000 rows).", gt=0, lt=1)
    max_grad_norm: float = _field(1.0, "Each example's gradient is clipped to this L2 norm before noise is added "
                                  "(the sensitivity C; the noise std is noise_multiplier * C).", gt=0)
    noise_multiplier: float | None = _field(
        None, "Fix the noise multiplier instead of calibrating it from epsilon; training then stops when the "
        "budget is spent (possibly before training.epochs).", gt=0, le=1000)
    accountant: Literal["rdp", "prv"] = _field(
        "rdp", "How spent epsilon is computed: rdp (Renyi DP, Mironov 2017; Opacus' default) or prv (privacy "
        "random variables, Gopi et al. 2021; tighter, slower).")
    poisson_sampling: bool = _field(
        True, "Poisson batches (each row joins each step with probability batch_size/n, so batch sizes vary): "
        "what the accountant assumes. false: shuffled fixed-size batches, the common approximation that the "
        "analysis does not strictly cover.")
    secure_mode: bool = _field(
        False, "Noise robust to floating-point attacks (Opacus secure_mode: 4 Gaussian draws per value); slower. "
        "For a deployed guarantee also seed from a cryptographic source.")
    fix_layers: bool = _field(
        False, "Replace layers DP-SGD cannot train (BatchNorm mixes the examples of a batch) by GroupNorm "
        "(gcd(32, C) groups: the rule of Opacus' ModuleValidator.fix), in training and in the saved model.")


class TrainingConfig(Strict):
    epochs: int = _field(10, "Maximum number of passes over the training split.", ge=1)
    batch_size: Union[Annotated[int, Field(ge=1)], Literal["full"]] = _field(
        64, "Rows per step; 'full' is full-batch gradient descent (one step per epoch)."
    )
    optimizer: Optimizer = _field(Adam(), "sgd | adam | adamw | adagrad | rmsprop, with its own options.")
    schedule: Schedule = _field(ConstantSchedule(), "constant | step | cosine | onecycle | plateau.")
    regularization: Regularization = _field(Regularization(), "L1/L2 penalties, dropout and DropConnect.")
    early_stopping: EarlyStopping | None = _field(None, "Stop when a metric stops improving; null trains all epochs.")
    grad_clip: float | None = _field(None, "Clip the gradient's global L2 norm to this value.", gt=0)
    precision: Literal["fp32", "bf16", "fp16"] = _field("fp32", "bf16 autocast works on CPU; fp16 needs a GPU.")
    channels_last: bool = _field(False, "Channels-last memory format for image models (faster on some CPUs).")
    compile: bool = _field(False, "torch.compile the model (slow start, may run faster); the first compiled step's "
                           "time, compilation included, is reported as compile_seconds in metrics.json.")
    activation_checkpointing: bool = _field(
        False, "Recompute each transformer layer's activations in the backward pass instead of keeping them "
        "(torch.utils.checkpoint, use_reentrant=False; Hugging Face gradient checkpointing for minilm): less "
        "activation memory for about one more forward's time, the same gradients. For text:transformer, "
        "sequence:transformer and minilm encoders; a recipe without one is refused.")
    seed: int = _field(0, "Seed of weights, shuffling and dropout; runs are bit-identical on CPU.", ge=0, le=2**63 - 1)
    accumulate: int = _field(
        1, "Gradient accumulation: sum the gradients of this many batches, then take one optimizer step, so "
        "batch_size 32 with accumulate 2 updates like batch_size 64 in half the activation memory. Each batch's "
        "loss is weighted by its share of the rows of its group; the epoch's last group may be shorter. Schedule "
        "lengths (warm-up, cosine, onecycle, step) count optimizer steps.", ge=1)
    callbacks: list[Union[str, CallbackSpec]] = _field(
        [], "Extra training callbacks by registered name: `[name, {name: ..., <option>: ...}]`. A callback gets "
        "on_fit_start, on_epoch_start, on_step_end, on_epoch_end (returns a stop vote; any stop wins), on_fit_end "
        "and on_run_end (the run directory is complete). Unknown names and options are recipe errors.")
    checkpoint_every_steps: int | None = _field(None, "Also checkpoint every N batches (always at each epoch end).", ge=1)
    sampling: Literal["auto", "random", "by_length"] = _field(
        "auto", "How rows are grouped into batches. random: a fresh shuffle each epoch. by_length: shuffle, then "
        "put rows of similar token length together (sorted within windows of 50 batches, batches in random order), "
        "so batches carry little padding — what fastai's SortishSampler and Hugging Face's group_by_length do. "
        "auto: by_length when a text encoder's cost follows the real length (minilm trims padding, lstm/gru pack "
        "it), else random.")
    refit: bool = _field(
        False, "Recommendation recipes: after training (early-stopped on val), train a fresh model with the same seed "
        "on train + val for the epochs the first one kept (its best epoch), and test and save that one, as the "
        "leave-last-out papers do before the test (the val interaction is then part of the user's training data, "
        "not only of the test row's history). `val` metrics are the first model's; test, the sampled protocol and "
        "the artifact are the refit's; the most-popular baseline stays counted on train. Costs a second training.")
    cross_fit: int = _field(
        1, "k > 1: a k-fold cross-fit ensemble (bagging, as AutoGluon and the RealMLP/TabM benchmarks do on small "
        "tables). The validation rows join the training rows; the pool is dealt into k folds (stratified on a "
        "category/binary first output), and k models are trained one after another, member i on every fold but i "
        "with fold i as its validation split (early stopping, restore_best) and seed training.seed + i. The saved "
        "model averages the members' probabilities (numbers: their mean). `val` metrics are out-of-fold (each row "
        "scored by the member that did not train on it), and the baseline is fitted on the same pooled rows. Costs "
        "k trainings; every row trains, and model selection watches every row instead of a small validation share. "
        "`dlforge cv` and `lr-find` train single members.", ge=1, le=20)
    eval_batch_size: int = _field(2048, "Rows per forward pass at evaluation.", ge=1)
    threads: int | None = _field(None, "torch intra-op threads; null keeps torch's default.", ge=1, le=1024)
    strategy: Literal["ddp", "fsdp"] = _field(
        "ddp", "How several processes (dlforge train --nproc N, --nnodes, --ray-address) share training. ddp: each "
        "holds the whole model, trains on its part of every global batch (the same batches and row order as one "
        "process) and the gradients are averaged (gloo on CPU, NCCL on GPU). fsdp (FSDP2 fully_shard): the same "
        "batches, but each process holds 1/N of the weights, gradients and optimizer state (each encoder and "
        "layer gathered for its own forward and backward); checkpoints hold the full state, so a run resumes on "
        "either strategy and any process count. Not with l1/l2 regularization, fp16 or compile (refused, with "
        "the reason). One process ignores it.")
    privacy: Privacy | None = _field(
        None, "Differentially private training (DP-SGD, needs pip install 'dlforge[privacy]'): "
        "{epsilon, delta, max_grad_norm, ...}; null trains without a privacy guarantee.")
    baseline: Union[Literal["auto"], bool] = _field(
        "auto", "Also fit quick scikit-learn baselines (HistGradientBoosting; logistic or ridge regression) on the "
        "same split and report them beside the model's metrics (metrics.json `baseline`, the summary, the report): "
        "does deep learning pay here? auto: on when every input and the one output are number/category/binary "
        "columns. Needs the tabular extra (pip install 'dlforge[tabular]'); without it, one notice.")


