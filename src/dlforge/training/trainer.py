"""The training loop: in-memory batches, mixed precision, clipping, accumulation, schedules, exact resume.

It reads top to bottom: for each epoch, for each batch: forward, loss, backward, (every `accumulate`
batches) step; then validate, log, checkpoint, and stop if any callback votes so. Everything around the
loop is a plugin, so a new capability never adds an `if` here:
  - the strategy (training/strategy.py) owns the device and wraps model, optimizer and batches once;
  - model transforms (model -> model) run before the optimizer is built (QAT, pruning masks);
  - loss hooks ((trainer, logits, targets, loss) -> loss) add terms (distillation, QAT penalties);
  - callbacks (training/callbacks/) observe and vote to stop.
A stop request (training/stop.py; the CLI sets it on Ctrl-C/SIGTERM) is honoured after the current step:
the trainer checkpoints and raises TrainingInterrupted. The trainer installs no signal handler.

A checkpoint never holds a diverged model: before each one, and every FINITE_CHECK_STEPS steps, the losses
logged since the last check (and, at a checkpoint, the weights) are checked for NaN/inf in one host sync;
the first bad step stops training with TrainingDiverged (the step, the batch's rows, the likely cause), and
the last good checkpoint stays on disk. A checkpoint written after the last epoch (or an early stop) is
marked finished, so resuming it trains nothing: the run's metrics and weights stay exactly those of the
uninterrupted run.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from dlforge.core.errors import ArtifactError, TrainingDiverged, TrainingInterrupted
from dlforge.data.batches import InMemoryBatches, epoch_batches, eval_batches
from dlforge.evaluation.metrics import compute_metrics, flatten
from dlforge.models.layers import RandomStateful
from dlforge.training.callbacks import EarlyStopping, Progress, resolve_hooks
from dlforge.training.checkpoint import DIGEST_VERSION, recipe_digest, save_checkpoint
from dlforge.training.distributed import PLAIN_STATE
from dlforge.training.divergence import likely_cause
from dlforge.training.optim import build_optimizer, build_schedule
from dlforge.training.sampling import length_inputs
from dlforge.training.stop import StopRequest
from dlforge.training.precision import check_precision
from dlforge.training.strategy import StatefulStrategy, Strategy, build_strategy

ModelTransform = Callable[[torch.nn.Module], torch.nn.Module]
LossHook = Callable[..., torch.Tensor]  # (trainer, logits, targets, loss) -> loss
# Losses are checked for NaN/inf this often (one host sync each; a checkpoint and the epoch's end check too).
# Measured: a check of 50 losses costs 147 us on a loaded 2-core EPYC (3 us a step; an MLP step is ~1 ms), and
# training with and without it took the same CPU time within noise; a diverged run stops within 50 steps.
FINITE_CHECK_STEPS = 50


@dataclass
class TrainResult:
    history: list[dict] = field(default_factory=list)
    epochs_run: int = 0
    train_seconds: float = 0.0
    stopped_early: bool = False
    best_epoch: int | None = None


class FirstCallTimer:
    """Calls `fn`, timing its first call (a compiled module compiles then); later calls pass straight through."""

    def __init__(self, fn):
        self.fn = fn
        self.seconds: float | None = None

    def __call__(self, *args, **kwargs):
        if self.seconds is not None:
            return self.fn(*args, **kwargs)
        started = time.perf_counter()
        out = self.fn(*args, **kwargs)
        if torch.cuda.is_available():
            torch.cuda.synchronize()  # once: the kernels compiled and launched so far are part of the time
        self.seconds = time.perf_counter() - started
        return out


class Trainer:
    def __init__(self, recipe, model: torch.nn.Module, train, val, signature: dict, *, run_dir: Path,
                 callbacks=(), progress: bool = True, scales: dict[str, float] | None = None, augment=None,
                 strategy: Strategy | str | None = None, model_transforms: tuple[ModelTransform, ...] = (),
                 loss_hooks: tuple[LossHook, ...] = (), stop=None):
        self.recipe = recipe
        self.config = recipe.training
        self.strategy = build_strategy(strategy, self.config)
        self.device = self.strategy.device
        check_precision(self.config.precision, self.device)
        for transform in model_transforms:  # before the optimizer exists, so it holds the transformed parameters
            model = transform(model)
        self.model = self.strategy.place_model(model)
        self.signature = signature
        self.scales = scales or {}
        self.run_dir = Path(run_dir)
        self.train = self.strategy.place_split(train)
        self.val = self.strategy.place_split(val) if val is not None and len(val) else None
        n_train = len(train)
        batch_size = n_train if self.config.batch_size == "full" else self.config.batch_size
        batches = InMemoryBatches(n_train, batch_size, seed=self.config.seed + 1, lengths=self._row_lengths())
        optimizer = build_optimizer(self.model, self.config.optimizer)
        wrapped, self.optimizer, self.batches = self.strategy.setup(self.model, optimizer, batches)
        # A data-parallel strategy returns a wrapper (DDP) for training's forward; `self.model` stays the module
        # itself: its loss, its state_dict (loadable on any process count) and evaluation, which needs no collective.
        self.model = getattr(wrapped, "module", wrapped)
        # Under data parallelism each process's loss is weighted by its share of the global batch (ShardedBatches).
        self._rank_weight = getattr(self.batches, "rank_weight", None)
        self._mean_over_processes = getattr(self.strategy, "mean_over_processes", None)
        self.is_main = getattr(self.strategy, "is_main", True)  # only the main process writes checkpoints
        # How model/optimizer state is read and written: state_dicts, or FSDP's gathered full state (the same form).
        self.state_io = getattr(self.strategy, "state_io", PLAIN_STATE)
        # Under data parallelism evaluation is sharded over the processes and the logits gathered (a collective:
        # every process evaluates, until `release()`); the stop request is agreed on, so all stop at the same step.
        self._eval_shards = self.strategy if hasattr(self.strategy, "shard_rows") else None
        self.accumulate = self.config.accumulate
        # Schedules count optimizer steps: with accumulation, one per `accumulate` batches (and the epoch's last).
        self.updates_per_epoch = math.ceil(len(self.batches) / self.accumulate)
        self.schedule = build_schedule(self.optimizer, self.config.schedule, self.updates_per_epoch, self.config.epochs)
        self.early_stopping = EarlyStopping(self.config.early_stopping) if self.config.early_stopping else None
        self.progress = Progress(total_epochs=self.config.epochs, steps_per_epoch=len(self.batches), enabled=progress)
        # A stateful strategy's callbacks (DP-SGD's epsilon log) come first: what they log is shown and voted on.
        own = self.strategy.callbacks() if isinstance(self.strategy, StatefulStrategy) else []
        self.callbacks = [*own, self.progress, *callbacks] + ([self.early_stopping] if self.early_stopping else [])
        # Callbacks with state (other than early stopping, saved on its own) are checkpointed, in this order.
        self._stateful_callbacks = [cb for cb in self.callbacks if cb is not self.early_stopping
                                    and callable(getattr(cb, "state_dict", None))
                                    and callable(getattr(cb, "load_state_dict", None))]
        # Hooks resolved once: a getattr per callback per step is measurable on small models.
        self._hooks = resolve_hooks(self.callbacks)
        self.loss_hooks = tuple(loss_hooks)
        self.stop = stop if stop is not None else StopRequest()
        self._stopping = self.strategy.agreed_stop(self.stop) if hasattr(self.strategy, "agreed_stop") else self.stop.is_set
        self.penalized = [p for p in self.model.parameters() if p.ndim > 1 and p.requires_grad]
        # torch.compile compiles on the first call (Dynamo, and AOTAutograd's forward and backward graphs): that
        # call's time is reported as compile_seconds (metrics.json), apart from the steady-state steps.
        self.step_model = FirstCallTimer(torch.compile(wrapped)) if self.config.compile else wrapped
        self.eval_model = self.step_model if wrapped is self.model else (
            torch.compile(self.model) if self.config.compile else self.model)
        self.scaler = torch.amp.GradScaler("cuda") if self.config.precision == "fp16" else None
        # Training-batch augmentation (data/augment.py): own generator, checkpointed; never applied at evaluation.
        self.augment = augment
        # Per-step losses of the current epoch, kept on the device: appending costs nothing, while an
        # in-place add is a kernel launch per step (~4 us, 0.5% of an MLP step); summed when read.
        self._losses: list[torch.Tensor] = []
        self._checked = 0  # how many of `_losses` were checked finite
        self._recipe_sha256 = recipe_digest(recipe)

    @property
    def compile_seconds(self) -> float | None:
        """Seconds of the first compiled training forward (compilation included); None without training.compile."""
        return getattr(self.step_model, "seconds", None)

    # ------------------------------------------------------------ setup helpers
    def _row_lengths(self) -> torch.Tensor | None:
        """Real tokens per training row when batches are grouped by length (training.sampling), else None."""
        inputs = length_inputs(self.recipe, self.model, self.signature,
                               has_tokens=lambda name: not self.train.x[name].is_floating_point())
        if not inputs:
            return None
        return sum((self.train.x[name] != pad).sum(1) for name, pad in inputs.items())

    def _autocast(self):
        if self.config.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.config.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def _penalty(self) -> torch.Tensor | None:
        reg = self.config.regularization
        terms = []
        if reg.l1:
            terms.append(reg.l1 * sum(p.abs().sum() for p in self.penalized))
        if reg.l2:
            terms.append(reg.l2 * sum(p.pow(2).sum() for p in self.penalized))
        return sum(terms) if terms else None

    def running_loss(self) -> float:
        return float(torch.stack(self._losses).mean()) if self._losses else float("nan")

    # ------------------------------------------------------------ one step / one evaluation
    def step(self, x: dict[str, torch.Tensor], y: dict[str, torch.Tensor], *, weight: float = 1.0,
             zero: bool = True, update: bool = True) -> torch.Tensor:
        """Forward, loss, backward of one batch; `update` steps the optimizer and schedule.

        Under accumulation the fit loop passes `zero` on a group's first batch, `update` on its last, and
        `weight` = the batch's share of the group's rows, so the summed gradient is that of one big batch.
        Returns (and logs) the unweighted loss, as without accumulation.
        """
        mix = None
        if self.augment is not None:
            x, mix = self.augment(x)
        with self._autocast():
            logits = self.step_model(x)
            loss = self.model.loss(logits, y)
            if mix is not None:  # mixup/cutmix: mix the losses of both partners' targets by the same weight
                perm, lam = mix
                partner = {k: v.index_select(0, perm.to(v.device)) for k, v in y.items()}
                loss = lam * loss + (1 - lam) * self.model.loss(logits, partner)
            for hook in self.loss_hooks:
                loss = hook(self, logits, y, loss)
        penalty = self._penalty()
        if penalty is not None:
            loss = loss + penalty
        if zero:
            self.optimizer.zero_grad(set_to_none=True)
        scaled = loss if weight == 1.0 else loss * weight
        if self.scaler is not None:
            self.scaler.scale(scaled).backward()
        else:
            scaled.backward()
        if update:
            if self.scaler is not None:
                self.scaler.unscale_(self.optimizer)
            if self.config.grad_clip:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
            if self.scaler is not None:
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                self.optimizer.step()
            self.schedule.after_step()
        self._losses.append(loss.detach())  # stays on the device: no host sync per step
        return loss.detach()

    def _micro(self, step: int) -> dict:
        """`step`'s place in its accumulation group: weight (its share of the group's rows), zero, update."""
        n, size, total = self.batches.n_rows, self.batches.batch_size, len(self.batches)
        first = step - step % self.accumulate
        last = min(first + self.accumulate, total) - 1
        rows = min((step + 1) * size, n) - step * size
        group_rows = min((last + 1) * size, n) - first * size
        share = self._rank_weight(step) if self._rank_weight is not None else 1.0
        return {"weight": rows / group_rows * share, "zero": step == first, "update": step == last}

    @torch.no_grad()
    def predict_logits(self, split) -> dict[str, torch.Tensor]:
        """Logits of every row of `split`, in order. Under data parallelism (until `release()`), every process must
        call it: each scores its share of the rows and the shares are gathered, so all get the whole split's."""
        self.model.eval()
        n = len(split)
        shards = self._eval_shards if n else None
        index = None
        if shards is not None:
            shards.sync_buffers(self.model)
            index = shards.shard_rows(n)
        chunks: dict[str, list] = {}
        for rows in eval_batches(n if index is None else len(index), self.config.eval_batch_size):
            if index is not None:
                rows = index[rows]
            with self._autocast():
                out = self.eval_model({k: v[rows] for k, v in split.x.items()})
            for name, logits in out.items():
                chunks.setdefault(name, []).append(logits.float())
        logits = {name: torch.cat(parts) for name, parts in chunks.items()}
        if shards is not None:
            logits = {name: shards.gather_rows(t, n) for name, t in logits.items()}
        return logits

    def model_state(self) -> dict:
        """The model's full state (under FSDP gathered: every process takes part, rank 0 receives it)."""
        return self.state_io.model_state(self.model)

    def release(self) -> torch.nn.Module:
        """End the collective phase: from here the main process evaluates alone (under FSDP it gets an ordinary
        module holding the full trained weights; every process takes part in gathering them)."""
        if self._eval_shards is not None:
            self.model = self.strategy.release(self.model)
            self.eval_model = self.model
            self._eval_shards = None
        return self.model

    def stop_requested(self) -> bool:
        """Whether to stop now; under data parallelism agreed by all processes (each must call it here too)."""
        now = getattr(self._stopping, "now", None)
        return now() if now is not None else self.stop.is_set()

    def evaluate(self, split, *, detail: bool = False) -> dict:
        logits = self.predict_logits(split)
        return compute_metrics(self.model, logits, split.y, self.signature,
                               detail=detail, scales=self.scales)

    # ------------------------------------------------------------ the loop
    def fit(self, resume: dict | None = None) -> TrainResult:
        result = TrainResult()
        start_epoch, start_step, permutation = 0, 0, None
        if resume is not None:
            start_epoch, start_step, permutation = self._restore(resume, result)
        # A finished run (last epoch done, or stopped early) resumes into its post-training phase only.
        end_epoch = start_epoch if resume is not None and resume.get("finished") else self.config.epochs
        self._call("on_fit_start")  # callbacks' set-up (a tracking store's first migrations) is not loop time
        seconds_before = result.train_seconds
        started = time.perf_counter()
        step_hooks = self._hooks["on_step_end"]
        every = self.config.checkpoint_every_steps
        weighted = self.accumulate > 1 or self._rank_weight is not None
        for epoch in range(start_epoch, end_epoch):
            if permutation is None:
                permutation = self.batches.permutation()
                self._losses, self._checked = [], 0
            self.model.train()
            self._call("on_epoch_start", epoch)
            batches = epoch_batches(self.train, self.batches.slices(permutation, start_step),
                                    workers=self.recipe.data.workers)
            for step, (x, y) in enumerate(batches, start=start_step):
                if weighted:
                    self.step(x, y, **self._micro(step))
                else:
                    self.step(x, y)
                for hook in step_hooks:
                    hook(self, step)
                stopping = self._stopping()
                if stopping or (every and (self._global_step(epoch, step) + 1) % every == 0):
                    result.train_seconds = seconds_before + time.perf_counter() - started
                    self._save(epoch, step + 1, permutation, result)
                elif (step + 1) % FINITE_CHECK_STEPS == 0:
                    self._check_finite(epoch, permutation)
                if stopping:
                    self.progress.close()
                    raise TrainingInterrupted(str(self.run_dir))
            self._check_finite(epoch, permutation)  # before validation: a diverged model is not scored
            start_step, permutation = 0, None
            train_loss = self.running_loss()
            if self._mean_over_processes is not None:  # every process's loss on its share of the rows
                train_loss = self._mean_over_processes(train_loss)
            metrics = {"epoch": epoch + 1, "train.loss": train_loss}
            if self.val is not None:
                metrics.update(flatten(self.evaluate(self.val), "val"))
            metrics["lr"] = self.optimizer.param_groups[0]["lr"]
            self.schedule.after_epoch(metrics)
            result.history.append(metrics)
            result.epochs_run = epoch + 1
            # Every callback votes (a list, not a generator: no short-circuit), and any stop wins.
            should_stop = any([bool(vote(self, epoch, metrics)) for vote in self._hooks["on_epoch_end"]])
            result.train_seconds = seconds_before + time.perf_counter() - started
            result.stopped_early = should_stop and epoch + 1 < self.config.epochs
            self._save(epoch + 1, 0, None, result, finished=should_stop or epoch + 1 == self.config.epochs)
            if should_stop:
                break
        if hasattr(self._stopping, "finish"):  # the last step's stop check, still in flight under data parallelism
            self._stopping.finish()
        if self.early_stopping is not None and self.early_stopping.best_state is not None:
            self.state_io.load_model_state(self.model, self.early_stopping.best_state)
            result.best_epoch = self.early_stopping.best_epoch + 1
        self._call("on_fit_end", result)
        return result

    def time_steps(self, steps: int) -> dict:
        """Seconds per training step over `steps` steps after one warm-up step, on the first epoch's batches (what
        `dlforge train --nproc auto` and benchmarks/scale.py compare across process counts): `wall` (the mean wall
        time, every process finished) and `cpu` (the CPU time of all processes together, which background load
        on a shared machine does not inflate). Trains the model: call it on a throwaway trainer."""
        self.model.train()
        permutation = self.batches.permutation()
        batches = epoch_batches(self.train, self.batches.slices(permutation), workers=self.recipe.data.workers)
        started, cpu, timed = time.perf_counter(), time.process_time(), 0
        for step, (x, y) in enumerate(batches):
            if step == 1:  # after the warm-up step (a one-batch epoch times that step instead)
                self._sync()
                started, cpu, timed = time.perf_counter(), time.process_time(), 0
            self.step(x, y, **self._micro(step))
            timed += 1
            if step == steps:
                break
        self._sync()
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu
        if self._mean_over_processes is not None:  # the sum over the processes
            cpu = self._mean_over_processes(cpu) * self.batches.world_size
        return {"wall": wall / timed, "cpu": cpu / timed}

    def _sync(self) -> None:
        """Wait for the device (and, under data parallelism, the other processes): timings then mean wall time."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        if self._mean_over_processes is not None:
            self._mean_over_processes(0.0)  # an all-reduce: every process has finished its steps

    def end_run(self, run_dir: Path) -> None:
        """Tell the callbacks the run directory is complete (`dlforge.train` calls it last)."""
        self._call("on_run_end", Path(run_dir))

    def _global_step(self, epoch: int, step: int) -> int:
        return epoch * len(self.batches) + step

    def _call(self, hook: str, *args) -> None:
        for fn in self._hooks[hook]:
            fn(self, *args)

    # ------------------------------------------------------------ divergence
    def _check_finite(self, epoch: int, permutation, *, weights: bool = False) -> None:
        """Raise TrainingDiverged if a loss logged since the last check (or, with `weights`, a weight) is NaN/inf.

        One host sync for all of them; called every FINITE_CHECK_STEPS steps, at the epoch's end and before
        every checkpoint, never per step.
        """
        new = self._losses[self._checked:]
        flags = [torch.isfinite(torch.stack(new))] if new else []
        if weights:
            flags += [torch.isfinite(self.state_io.local(p)).all().reshape(1) for p in self.model.parameters()]
        if not flags:
            return
        flags = torch.cat([f.to(self.device) for f in flags])
        finite = bool(flags.all())
        if weights and self._mean_over_processes is not None:  # a shard's NaN: every process stops, not one
            finite = self._mean_over_processes(float(finite)) == 1.0
        if finite:
            self._checked = len(self._losses)
            return
        bad_losses = (~flags[:len(new)]).nonzero()
        step = self._checked + int(bad_losses[0]) if len(bad_losses) else len(self._losses) - 1
        value = float(self._losses[step]) if len(bad_losses) else None
        raise self._diverged(epoch, step, permutation, value)

    def _diverged(self, epoch: int, step: int, permutation, value: float | None) -> TrainingDiverged:
        """The error for a first non-finite loss (or weights) at `step`: which batch, and the likely cause."""
        size = self.batches.batch_size
        rows = permutation[step * size:(step + 1) * size] if permutation is not None else torch.zeros(0, dtype=torch.long)
        what = f"the training loss is {value}" if value is not None else "the weights hold NaN/inf"
        cause, where, fix = likely_cause(self.train, rows, self.config, self.optimizer.param_groups[0]["lr"])
        shown = ", ".join(str(int(r)) for r in rows[:5]) + (", ..." if len(rows) > 5 else "")
        return TrainingDiverged(
            f"training diverged: {what} at epoch {epoch + 1}, step {step + 1} (global step "
            f"{self._global_step(epoch, step) + 1}; a batch of {len(rows)} training-split rows: {shown}); "
            f"likely cause: {cause}", where=where,
            hint=f"{fix}; the last good checkpoint is kept in {self.run_dir / 'checkpoint'}, nothing was saved after "
                 "it; train again with --overwrite")

    # ------------------------------------------------------------ checkpoint state
    def _save(self, epoch: int, step: int, permutation, result: TrainResult, *, finished: bool = False) -> None:
        # A checkpoint must be a good one: the losses since the last check and the weights are all finite.
        self._check_finite(epoch - (1 if step == 0 else 0), permutation, weights=True)
        # Under FSDP these gather the full state (every process takes part; rank 0 receives it).
        model_state = self.state_io.model_state(self.model)
        optimizer_state = self.state_io.optimizer_state(self.model, self.optimizer)
        grads = self.state_io.grads(self.model) if step % self.accumulate else None
        if not self.is_main:  # the other processes hold the same weights and state (the gradients are all-reduced)
            return
        state = {
            "recipe_sha256": self._recipe_sha256, "recipe_digest": DIGEST_VERSION, "finished": finished,
            "stopped_early": result.stopped_early, "epoch": epoch, "step": step, "permutation": permutation,
            "model": model_state, "optimizer": optimizer_state,
            "schedule": self.schedule.state_dict(), "batch_rng": self.batches.generator.get_state(),
            "torch_rng": torch.get_rng_state(), "losses": torch.stack(self._losses).cpu() if self._losses else torch.zeros(0),
            "history": result.history, "train_seconds": result.train_seconds,
            "early_stopping": self.early_stopping.state_dict() if self.early_stopping else None,
        }
        if grads is not None:  # inside an accumulation group: its gradients so far are part of the state
            state["grads"] = grads
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        if self.augment is not None:
            state["augment"] = self.augment.state_dict()
        if isinstance(self.strategy, StatefulStrategy):  # e.g. the privacy accountant: resume spends no budget twice
            state["strategy"] = self.strategy.state_dict()
        if isinstance(self.model, RandomStateful) and self.model.rng_state() is not None:  # a negative sampler
            state["model_rng"] = self.model.rng_state()
        if self._stateful_callbacks:  # e.g. the ema callback's averaged weights
            state["callbacks"] = [cb.state_dict() for cb in self._stateful_callbacks]
        save_checkpoint(self.run_dir, state)

    def _restore(self, state: dict, result: TrainResult):
        try:
            self.state_io.load_model_state(self.model, state["model"])
        except RuntimeError as exc:  # a checkpoint from before recipe binding, of another architecture
            raise ArtifactError(f"the checkpoint does not fit this recipe's model: {str(exc)[:300]}",
                                where=str(self.run_dir / "checkpoint"),
                                hint=f"start the run over: `dlforge train RECIPE --out {self.run_dir} --overwrite`") from None
        self.state_io.load_optimizer_state(self.model, self.optimizer, state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.batches.generator.set_state(state["batch_rng"])
        torch.set_rng_state(state["torch_rng"])
        self._losses = list(state["losses"].to(self.device).unbind())
        self._checked = len(self._losses)  # a checkpoint is written only after its losses were checked
        if state.get("grads"):
            self.state_io.load_grads(self.model, state["grads"])
        if self.early_stopping is not None and state.get("early_stopping"):
            self.early_stopping.load_state_dict(state["early_stopping"])
        if self.augment is not None and "augment" in state:
            self.augment.load_state_dict(state["augment"])
        if self.scaler is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        if isinstance(self.strategy, StatefulStrategy) and state.get("strategy") is not None:
            self.strategy.load_state_dict(state["strategy"])
        if isinstance(self.model, RandomStateful) and state.get("model_rng") is not None:
            self.model.load_rng_state(state["model_rng"])
        for callback, saved in zip(self._stateful_callbacks, state.get("callbacks") or []):
            callback.load_state_dict(saved)
        result.history = list(state["history"])
        result.epochs_run = len(result.history)
        result.train_seconds = state["train_seconds"]
        result.stopped_early = bool(state.get("stopped_early", False))
        permutation = state["permutation"]
        return state["epoch"], state["step"], permutation
