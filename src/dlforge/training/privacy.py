"""DP-SGD as a strategy: Opacus' per-example gradients, clipping, noise and accountant behind the strategy seam.

`training.privacy` makes `build_strategy` pick `PrivateSGD`, which wraps the single-device strategy and, in its
`setup`, returns the model (with Opacus' per-example gradient hooks attached, not wrapped: its state_dict, loss
and saving are unchanged), a `DPOptimizer` (clip each example's gradient to C, add N(0, (sigma C)^2), average
over the expected batch) and `PrivateBatches` (Poisson batches drawn with tensor ops on the in-memory fast path).
The trainer's loop is unchanged.

The budget: sigma is calibrated (Opacus' `get_noise_multiplier`) so that `epochs` epochs of Poisson batches at
rate q = 1/steps_per_epoch spend at most epsilon at the recipe's delta; with a fixed `noise_multiplier` the
largest step count within the budget is found instead. Either way the batches stop before a step that would
exceed it (`max_steps`), so training never overspends. The accountant's state is the step count (sigma and q
are constant), checkpointed with the trainer's state: a resumed run continues the same accounting, and the
noise comes from torch's global generator, which the trainer checkpoints, so resume is bit-identical.

"Hopeless" noise (refused, with the smallest usable epsilon): over the run's T steps the clipped signal adds up
to at most T * B * C (B the expected batch) while the noise adds up to sigma * C * sqrt(T * d) in norm
(d trainable parameters), so below run SNR = B * sqrt(T) / (sigma * sqrt(d)) = 1 the noise outweighs even
perfectly aligned gradients. (An earlier per-epoch version of this bound refused budgets that do learn: the
tuxpaint head at epsilon 3 reaches 76-83% against 37% for the majority class, benchmarks/privacy.md.)

Clipping runs in the same backward pass without per-example weight copies where every trainable layer has a
per-example rule (training/per_example.py: Linear and Conv2d by ghost norms from Gram matrices where those are
cheaper, else by per-example gradients; Opacus' rules for the rest); otherwise Opacus' hooks materialise the
per-example gradients.
"""

from __future__ import annotations

import math
import sys
import warnings
from dataclasses import asdict, dataclass, field

import torch

from dlforge.core.errors import DlforgeError, ModelError
from dlforge.data.batches import InMemoryBatches
from dlforge.training import per_example
from dlforge.training.strategy import SingleDevice, Strategy, strategies

class PrivacyBudgetError(DlforgeError):
    """A privacy budget that cannot be spent usefully on this data (delta >= 1/n, hopeless noise): exit code 2."""


HOPELESS_SNR = 1.0  # run signal-to-noise below which a budget is refused (see the module docstring)
EXTRA = "pip install 'dlforge[privacy]'"


def _opacus():
    try:
        import opacus  # noqa: F401
    except ImportError:
        raise DlforgeError("training.privacy needs Opacus, which is not installed", where="training.privacy",
                           hint=EXTRA) from None
    return opacus


def epsilon_spent(noise_multiplier: float, sample_rate: float, steps: int, delta: float,
                  accountant: str = "rdp") -> float:
    """The epsilon Opacus' accountant gives for `steps` Poisson-sampled Gaussian steps (0 for no step)."""
    if steps <= 0:
        return 0.0
    _opacus()
    from opacus.accountants import create_accountant

    acc = create_accountant(mechanism=accountant)
    acc.history = [(noise_multiplier, sample_rate, steps)]
    with warnings.catch_warnings():  # "optimal order is the largest alpha": the bound is valid, only looser
        warnings.filterwarnings("ignore", message="Optimal order")
        return float(acc.get_epsilon(delta=delta))


@dataclass
class PrivacyPlan:
    """What a DP recipe will spend: the noise, the sampling, the steps and epsilon at each epoch."""

    epsilon: float  # the budget
    delta: float
    max_grad_norm: float
    noise_multiplier: float
    sample_rate: float
    expected_batch: float
    steps_per_epoch: int
    epochs: int
    max_steps: int  # steps within the budget (= epochs * steps_per_epoch unless the noise is fixed)
    accountant: str
    poisson_sampling: bool
    trainable: int
    snr: float
    smallest_epsilon: float
    calibrated: bool
    epoch_epsilons: list[float] = field(default_factory=list)

    def block(self, *, steps: int, epsilon: float) -> dict:
        """metrics.json's `privacy` block: enough to recompute epsilon with any accountant."""
        return {"epsilon": round(epsilon, 6), "delta": self.delta, "noise_multiplier": self.noise_multiplier,
                "sample_rate": self.sample_rate, "steps": steps, "accountant": self.accountant,
                "epsilon_budget": self.epsilon, "max_grad_norm": self.max_grad_norm,
                "poisson_sampling": self.poisson_sampling, "expected_batch_size": round(self.expected_batch, 3),
                "stopped_at_budget": steps >= self.max_steps and self.max_steps < self.epochs * self.steps_per_epoch}

    def as_dict(self) -> dict:
        return asdict(self)

    def lines(self) -> list[str]:
        """The plan in words, for `dlforge privacy plan` and the start of `dlforge train`."""
        how = "calibrated to the budget" if self.calibrated else "fixed by the recipe"
        out = [f"budget: epsilon {self.epsilon:g}, delta {self.delta:g} ({self.accountant} accountant)",
               f"noise multiplier: {self.noise_multiplier:.4f} ({how}); clipping norm C = {self.max_grad_norm:g}",
               f"sampling: {'Poisson' if self.poisson_sampling else 'shuffled fixed-size (approximation)'}, rate "
               f"{self.sample_rate:.6f} (expected batch {self.expected_batch:.1f}), {self.steps_per_epoch} steps an "
               f"epoch, {self.max_steps} steps in all",
               f"run signal-to-noise: {self.snr:.2f} (B*sqrt(T)/(sigma*sqrt(d)), T steps, d = {self.trainable:,} trainable "
               f"parameters; below {HOPELESS_SNR:g} is refused: smallest usable epsilon {self.smallest_epsilon:.3g})",
               "epsilon spent after each epoch:"]
        out += [f"  epoch {i + 1:>3}: {eps:.4f}" for i, eps in enumerate(self.epoch_epsilons)]
        if self.max_steps < self.epochs * self.steps_per_epoch:
            out.append(f"the budget is spent after {self.max_steps} of {self.epochs * self.steps_per_epoch} steps: "
                       "training stops there")
        return out


def _max_steps_within(budget: float, sigma: float, q: float, delta: float, accountant: str, upper: int) -> int:
    """The largest step count in [0, upper] whose epsilon is within the budget (epsilon grows with steps)."""
    if epsilon_spent(sigma, q, upper, delta, accountant) <= budget:
        return upper
    low, high = 0, upper  # eps(low) <= budget < eps(high)
    while high - low > 1:
        mid = (low + high) // 2
        if epsilon_spent(sigma, q, mid, delta, accountant) <= budget:
            low = mid
        else:
            high = mid
    return low


def plan_privacy(privacy, *, n_rows: int, batch_size: int, epochs: int, trainable: int) -> PrivacyPlan:
    """The noise, steps and epsilon curve of `privacy` (a recipe's training.privacy) on `n_rows` training rows.

    Refuses (PrivacyBudgetError, exit 2) a delta of 1/n or more, and a budget whose noise is hopeless (run SNR below
    HOPELESS_SNR) or unreachable, naming the smallest epsilon this recipe could use.
    """
    _opacus()
    from opacus.accountants.utils import get_noise_multiplier as opacus_noise

    def get_noise_multiplier(**kwargs) -> float:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Optimal order")
            return opacus_noise(**kwargs)

    where = "training.privacy"
    if n_rows < 2:
        raise PrivacyBudgetError(f"DP-SGD needs training rows; the training split has {n_rows}", where=where,
                          hint="train on more rows")
    if privacy.delta >= 1 / n_rows:
        raise PrivacyBudgetError(
            f"delta {privacy.delta:g} is not below 1/n = 1/{n_rows:,} = {1 / n_rows:.3g}: a mechanism that publishes "
            "one random training row outright satisfies (0, 1/n)-DP, so this delta protects no one",
            where=f"{where}.delta", hint=f"use delta <= {_round_down(0.1 / n_rows):g} (1/(10 n)), e.g. 1e-5 for 60,000 rows")
    batch = min(int(batch_size), n_rows)
    steps_per_epoch = math.ceil(n_rows / batch)
    q = 1.0 / steps_per_epoch  # Opacus' convention: the rate of a DataLoader of len(loader) batches
    expected = n_rows * q
    total = steps_per_epoch * epochs
    acc = privacy.accountant
    # The loudest noise that still leaves a run SNR of HOPELESS_SNR, and the epsilon it spends.
    sigma_max = expected * math.sqrt(total) / (HOPELESS_SNR * math.sqrt(max(trainable, 1)))
    smallest = epsilon_spent(sigma_max, q, total, privacy.delta, acc)
    if privacy.noise_multiplier is None:
        try:
            sigma = get_noise_multiplier(target_epsilon=privacy.epsilon, target_delta=privacy.delta,
                                         sample_rate=q, steps=total, accountant=acc)
        except ValueError:  # Opacus gives up above sigma 2000
            sigma = math.inf
        max_steps = total
    else:
        sigma = privacy.noise_multiplier
        max_steps = _max_steps_within(privacy.epsilon, sigma, q, privacy.delta, acc, total)
        if max_steps == 0:
            raise PrivacyBudgetError(
                f"noise multiplier {sigma:g} spends more than epsilon {privacy.epsilon:g} in its first step "
                f"(rate {q:.4g}, delta {privacy.delta:g})", where=f"{where}.noise_multiplier",
                hint="raise noise_multiplier, raise epsilon, or remove noise_multiplier to calibrate it")
    snr = expected * math.sqrt(max_steps) / (sigma * math.sqrt(max(trainable, 1)))
    if snr < HOPELESS_SNR:
        # Offer an epsilon that passes: Opacus calibrates sigma to within 0.01 of the target epsilon, on the safe
        # side, so the exact boundary rounded up can still calibrate a little too much noise; step up until not.
        offer = _round_up(smallest)
        for _ in range(20):
            if get_noise_multiplier(target_epsilon=offer, target_delta=privacy.delta, sample_rate=q, steps=total,
                                    accountant=acc) <= sigma_max:
                break
            offer = _round_up(offer * 1.02 + 0.01)
        raise PrivacyBudgetError(
            f"epsilon {privacy.epsilon:g} needs noise multiplier {sigma:.4g} over {total:,} steps of expected batch "
            f"{expected:.0f}: over the whole run the noise would outweigh even perfectly aligned clipped gradients (signal-to-noise "
            f"{snr:.2f} < {HOPELESS_SNR:g} for {trainable:,} trainable parameters), so learning is hopeless",
            where=f"{where}.epsilon",
            hint=f"the smallest epsilon this recipe can use is {offer:g}; or raise batch_size (the noise "
                 "is averaged over the batch), or train fewer parameters (a frozen backbone)")
    epoch_eps = [epsilon_spent(sigma, q, min(e * steps_per_epoch, max_steps), privacy.delta, acc)
                 for e in range(1, epochs + 1) if (e - 1) * steps_per_epoch < max_steps]
    return PrivacyPlan(epsilon=privacy.epsilon, delta=privacy.delta, max_grad_norm=privacy.max_grad_norm,
                       noise_multiplier=sigma, sample_rate=q, expected_batch=expected, steps_per_epoch=steps_per_epoch,
                       epochs=epochs, max_steps=max_steps, accountant=acc, poisson_sampling=privacy.poisson_sampling,
                       trainable=trainable, snr=snr, smallest_epsilon=smallest,
                       calibrated=privacy.noise_multiplier is None, epoch_epsilons=epoch_eps)


def _round_up(x: float) -> float:
    scale = 10 ** (math.floor(math.log10(x)) - 1) if x > 0 else 1
    return math.ceil(x / scale) * scale


def _round_down(x: float) -> float:
    scale = 10 ** math.floor(math.log10(x))
    return math.floor(x / scale) * scale


def trainable_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def check_layers(model: torch.nn.Module) -> None:
    """Refuse a model DP-SGD cannot train, naming the first offending layer (Opacus' validators: BatchNorm, ...)."""
    _opacus()
    from opacus.validators import ModuleValidator

    for name, module in model.named_modules():
        if not any(p.requires_grad for p in module.parameters(recurse=False)):
            continue
        validate = ModuleValidator.VALIDATORS.get(type(module))
        errors = validate(module) if validate is not None else []
        if errors:
            norm = "BatchNorm" in type(module).__name__
            raise ModelError(
                f"DP-SGD cannot train layer '{name}' ({type(module).__name__}): "
                + ("batch normalisation mixes the examples of a batch, so an example's gradient depends on the "
                   "others and per-example clipping bounds nothing" if norm else str(errors[0])[:300]),
                where="training.privacy",
                hint="set training.privacy.fix_layers: true to replace it by GroupNorm (Opacus ModuleValidator.fix; "
                     "the saved model uses GroupNorm too), or build the model without it (e.g. batch_norm: false)"
                if norm else "replace that layer, or freeze it")


def plan_for(recipe, prepared) -> PrivacyPlan:
    """The plan `dlforge train` would follow for `recipe` on `prepared` data; refuses bad budgets and layers first.

    Builds the model once (seeded, as training does) to check its layers and count its trainable parameters.
    """
    from dlforge.models import build_model

    config = recipe.training
    torch.manual_seed(config.seed)
    model = build_model(recipe, prepared.signature())
    check_layers(model)
    n_rows = len(prepared.splits["train"])
    return plan_privacy(config.privacy, n_rows=n_rows, batch_size=config.batch_size, epochs=config.epochs,
                        trainable=trainable_parameters(model))


VALIDATION_NOTE = ("epsilon covers the training split only: the validation split (early stopping, model selection, "
                   "plateau schedules) is read without noise, which costs no privacy only if those rows are public "
                   "or may be used without protection")


class PrivateBatches:
    """The epoch's batches under DP-SGD: Poisson (each row joins each step with probability q) or shuffled
    fixed-size batches, cut off once the privacy budget's steps are spent.

    A Poisson epoch is one int64 seed drawn from the checkpointed batch generator (the trainer stores it as the
    epoch's "permutation"); each step's rows are `torch.rand(n) < q` under a generator seeded from it, so a
    resumed epoch redraws exactly the same batches. No per-row Python; one mask of n floats per step.
    """

    def __init__(self, inner: InMemoryBatches, plan: PrivacyPlan, steps_taken):
        self.inner = inner
        self.plan = plan
        self.steps_taken = steps_taken  # () -> optimizer steps taken so far (the ledger)
        self.n_rows = inner.n_rows
        self.batch_size = inner.batch_size
        self.generator = inner.generator  # checkpointed by the trainer as batch_rng
        self.poisson = plan.poisson_sampling

    def __len__(self) -> int:
        return self.plan.steps_per_epoch

    def permutation(self) -> torch.Tensor:
        if not self.poisson:
            return self.inner.permutation()
        return torch.randint(0, 2**62, (1,), generator=self.generator)

    def slices(self, permutation: torch.Tensor, start_step: int = 0):
        inner = self.inner.slices(permutation, start_step) if not self.poisson else None
        draws = torch.Generator().manual_seed(int(permutation[0])) if self.poisson else None
        for step in range(len(self)):
            if self.poisson:
                chosen = torch.rand(self.n_rows, generator=draws) < self.plan.sample_rate
                if step < start_step:
                    continue
            elif step < start_step:
                continue
            if self.steps_taken() >= self.plan.max_steps:  # the next step would spend more than the budget
                return
            if self.poisson:
                yield chosen.nonzero().squeeze(1)
            else:
                index = next(inner, None)
                if index is None:
                    return
                yield index


class EpsilonLog:
    """Adds `privacy.epsilon` (spent so far) to each epoch's metrics, and votes to stop once the budget is spent."""

    def __init__(self, strategy: PrivateSGD):
        self.strategy = strategy

    def on_epoch_end(self, trainer, epoch: int, metrics: dict) -> bool:
        metrics["privacy.epsilon"] = round(self.strategy.epsilon(), 6)
        spent = self.strategy.steps >= self.strategy.plan.max_steps
        if spent and epoch + 1 < self.strategy.plan.epochs:
            print(f"privacy budget spent (epsilon {metrics['privacy.epsilon']:.4g} of {self.strategy.plan.epsilon:g} "
                  f"after {self.strategy.steps} steps): training stops", file=sys.stderr)
        return spent


@strategies.register("dp_sgd")
class PrivateSGD:
    """DP-SGD on one device (Opacus): per-example clipping and calibrated Gaussian noise, with an accountant."""

    def __init__(self, privacy, *, epochs: int, base: Strategy | None = None, channels_last: bool = False):
        if privacy is None:
            raise PrivacyBudgetError("the dp_sgd strategy needs training.privacy", where="training.privacy",
                              hint="add training.privacy: {epsilon: 3, delta: 1e-5}")
        self.privacy = privacy
        self.epochs = epochs
        self.base = base if base is not None else SingleDevice(channels_last=channels_last)
        self.device = self.base.device
        self.plan: PrivacyPlan | None = None
        self.steps = 0  # the accountant's state: noisy steps taken (sigma and q are constant)

    @classmethod
    def from_config(cls, config) -> PrivateSGD:
        return cls(config.privacy, epochs=config.epochs, channels_last=config.channels_last)

    def place_model(self, model):
        check_layers(model)
        return self.base.place_model(model)

    def place_split(self, split):
        return self.base.place_split(split)

    def setup(self, model, optimizer, batches):
        from opacus.grad_sample import GradSampleHooks
        from opacus.optimizers import DPOptimizer

        self.plan = plan_privacy(self.privacy, n_rows=batches.n_rows, batch_size=batches.batch_size,
                                 epochs=self.epochs, trainable=trainable_parameters(model))
        # Hooks on the model itself (not a wrapper module): its state_dict, `loss` and saving stay as they are.
        # Noise from torch's global generator (generator=None), which the trainer checkpoints.
        dp = dict(noise_multiplier=self.plan.noise_multiplier, max_grad_norm=self.privacy.max_grad_norm,
                  expected_batch_size=self.plan.expected_batch, secure_mode=self.privacy.secure_mode)
        if per_example.supports(model):  # the clipped sum in one pass, without per-example weight copies
            self.clipper = per_example.PerExampleClipper(model)
            dp_optimizer = per_example.clipped_sum_optimizer(optimizer, self.clipper, **dp)
        else:  # a layer type only Opacus' hooks (functorch) handle
            # The first layer's input needs no gradient, which torch reports once per backward hook: expected here.
            warnings.filterwarnings("ignore", message="Full backward hook is firing when gradients are computed")
            self.hooks = GradSampleHooks(model, loss_reduction="mean")
            dp_optimizer = DPOptimizer(optimizer, **dp)
        dp_optimizer.attach_step_hook(self._count_step)
        return model, dp_optimizer, PrivateBatches(batches, self.plan, lambda: self.steps)

    def _count_step(self, optimizer) -> None:
        self.steps += 1

    def epsilon(self) -> float:
        plan = self.plan
        return epsilon_spent(plan.noise_multiplier, plan.sample_rate, self.steps, plan.delta, plan.accountant)

    def report(self) -> dict:
        """metrics.json's and model.json's `privacy` block."""
        return self.plan.block(steps=self.steps, epsilon=self.epsilon())

    def callbacks(self) -> list:
        return [EpsilonLog(self)]

    def state_dict(self) -> dict:
        return {"steps": self.steps, "noise_multiplier": self.plan.noise_multiplier,
                "sample_rate": self.plan.sample_rate, "accountant": self.plan.accountant}

    def load_state_dict(self, state: dict) -> None:
        if state.get("noise_multiplier") != self.plan.noise_multiplier or state.get("sample_rate") != self.plan.sample_rate:
            raise DlforgeError("the checkpoint's privacy accounting does not match this recipe's (noise "
                               f"{state.get('noise_multiplier')} vs {self.plan.noise_multiplier})",
                               where="training.privacy", hint="start the run over with --overwrite")
        self.steps = int(state["steps"])


__all__ = ["VALIDATION_NOTE", "PrivacyBudgetError", "EpsilonLog", "plan_for", "PrivacyPlan", "PrivateBatches", "PrivateSGD", "check_layers", "epsilon_spent",
           "plan_privacy", "trainable_parameters"]
