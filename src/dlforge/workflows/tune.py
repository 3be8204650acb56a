"""`dlforge tune`: search a recipe's `tune.space` with Optuna; every trial is an ordinary run directory.

    OUT/
      tune.json           the study's settings (storage, study name, trial budget, workers): what --resume reads
      recipe.yaml         the recipe searched (with its tune section)
      study.journal       Optuna's JournalStorage, file backend (unless --storage gave an RDB URL)
      trials/0007/        trial 7's run directory (pruned trials stop after their last epoch's checkpoint)
      best.yaml           the best trial's complete recipe, without the tune section: `dlforge train best.yaml`
      trials.csv          number, state, value, duration, epochs, every parameter, error, run directory
      plots/history.svg   optimisation history: each trial's value and the best so far
      plots/importance.svg  parameter importance (fANOVA, seeded) once two trials have completed
      tune.md             the summary

Workers are processes on this machine (spawned: torch and its thread pools start fresh in each) that share
the study through Optuna's JournalStorage with a file backend (Optuna advises against SQLite for parallel
workers: "database is locked", optuna#820); `storage` may instead be an RDB URL that workers on several
machines share. Each worker asks for a trial, trains it, and tells the result; a lock file held around
"count the trials, ask for one" keeps the budget exact on one machine (across machines, as Optuna's own
MaxTrialsCallback, the last trials may overshoot it by up to one per machine).

Resuming: trials that finished are kept; a trial left RUNNING by a process of this machine that is gone (killed,
machine rebooted) is marked FAIL (user attribute `interrupted`) and its parameters are queued to run again;
interrupted trials do not count towards the budget.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import sys
import time
from pathlib import Path


from dlforge.core.errors import DlforgeError, RecipeError, TrainingInterrupted
from dlforge.core.files import write_json, write_text
from dlforge.recipe.io import dump_recipe, load_recipe, recipe_base_dir, validate
from dlforge.workflows.tune_outputs import write_outputs
from dlforge.workflows.tune_study import (JOURNAL, LOCK, SETTINGS, TRIALS_DIR, TuneResult, best_trial, counted_trials,
                                         masked, open_study, require_optuna, short_value, suggest, trial_recipe)


class TuneInterrupted(TrainingInterrupted):
    """The search stopped on Ctrl-C or SIGTERM; finished trials are kept and `--resume` continues it."""

    exit_code = 130

    def __init__(self, out: str):
        self.run_dir = out
        DlforgeError.__init__(self, "search interrupted; finished trials are kept, the running ones are marked failed and "
                         "will run again", where=out, hint=f"continue with: dlforge tune --resume {out}")


def cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def parse_duration(text: str | None) -> float | None:
    """Seconds from '90', '90s', '10m', '1.5h'; None stays None."""
    if text is None:
        return None
    value = str(text).strip().lower()
    scale = {"s": 1, "m": 60, "h": 3600}.get(value[-1:], None)
    number = value[:-1] if scale else value
    try:
        seconds = float(number) * (scale or 1)
    except ValueError:
        raise DlforgeError(f"--timeout {text!r} is not a duration", where="--timeout",
                           hint="seconds, or a number with s, m or h: 600, 10m, 1.5h") from None
    if not math.isfinite(seconds) or seconds <= 0:
        raise DlforgeError(f"--timeout {text!r} must be a positive duration", where="--timeout", hint="e.g. 10m")
    return seconds


# ---------------------------------------------------------------- study and storage


@contextlib.contextmanager
def _lock(out: Path):
    """An exclusive lock on OUT/tune.lock between the workers of this machine (none where fcntl is missing)."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(out / LOCK, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# ---------------------------------------------------------------- one trial


def _metric_value(metrics: dict, metric: str) -> float | None:
    from dlforge.evaluation.metrics import flatten

    split, _, _ = metric.partition(".")
    value = flatten(metrics.get(split) or {}, split).get(metric)
    return None if value is None or not math.isfinite(value) else float(value)


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _run_trial(study, trial, recipe, out: Path, stop) -> str:
    """Train one trial and tell the study its outcome; returns the state's name. KeyboardInterrupt and a stop
    request mark it failed and interrupted (it runs again on --resume) and propagate as TuneInterrupted."""
    optuna = require_optuna()
    from dlforge.training.callbacks import ReportToTrial
    from dlforge.workflows.train import train

    config = recipe.tune
    run_dir = out / TRIALS_DIR / f"{trial.number:04d}"
    trial.set_user_attr("run_dir", str(run_dir.relative_to(out)))
    trial.set_user_attr("host", socket.gethostname())
    trial.set_user_attr("pid", os.getpid())
    started = time.perf_counter()
    params = {}
    reporter = ReportToTrial(trial, config.metric)
    try:
        params = suggest(trial, recipe)
        sampled = trial_recipe(recipe, params, name=f"{recipe.name}-trial-{trial.number}")
        # The scikit-learn baseline is the same for every trial (same rows, no searched field): fitted once, not
        # per trial; best.yaml keeps the recipe's own setting.
        sampled.training.baseline = False
        result = train(sampled, out=run_dir, callbacks=[reporter], progress=False, stop=stop)
        value = _metric_value(result.metrics, config.metric)
        trial.set_user_attr("epochs_run", result.metrics.get("epochs_run"))
        if value is None:
            raise DlforgeError(f"the run logged no finite {config.metric}")
    except optuna.TrialPruned as exc:
        trial.set_user_attr("epochs_run", reporter.last_epoch)
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        _say(f"trial {trial.number} pruned ({exc}) in {time.perf_counter() - started:.1f} s; {_params_text(params)}")
        return "PRUNED"
    except (KeyboardInterrupt, TrainingInterrupted):
        trial.set_user_attr("interrupted", True)
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        raise TuneInterrupted(str(out)) from None
    except Exception as exc:  # noqa: BLE001 - a crashed trial is recorded with its error; the study goes on
        message = exc.message if isinstance(exc, DlforgeError) else str(exc)
        error = f"{type(exc).__name__}: {message}".replace("\n", " ")[:500]
        trial.set_user_attr("error", error)
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        _say(f"trial {trial.number} failed: {error}; {_params_text(params)}")
        return "FAIL"
    study.tell(trial, value)
    best = best_trial(study)
    best_text = f" (best {best.value:.4f}, trial {best.number})" if best is not None else ""
    _say(f"trial {trial.number} complete: {config.metric} {value:.4f}{best_text} in "
         f"{time.perf_counter() - started:.1f} s; {_params_text(params)}")
    return "COMPLETE"


def _params_text(params: dict) -> str:
    return ", ".join(f"{k.rsplit('.', 1)[-1] if k.count('.') else k}={short_value(v)}" for k, v in params.items())


# ---------------------------------------------------------------- workers
def run_worker(out: str | Path, worker: int = 0, *, threads: int | None = None, deadline: float | None = None,
               stop=None) -> dict[str, int]:
    """One worker: ask, train, tell until the budget is used (or the deadline passed); {state: trials run}."""
    out = Path(out)
    if threads:
        import torch

        torch.set_num_threads(threads)
    settings = read_settings(out)
    recipe = _searched_recipe(out, settings)
    study = open_study(settings, out, recipe, worker=worker)
    done: dict[str, int] = {}
    while not (stop is not None and stop.is_set()):
        if deadline is not None and time.time() >= deadline:
            break
        with _lock(out):
            if counted_trials(study) >= settings["trials"]:
                break
            trial = study.ask()
        state = _run_trial(study, trial, recipe, out, stop)
        done[state] = done.get(state, 0) + 1
    return done


def _worker_process(out: str, worker: int, threads: int, deadline: float | None) -> None:
    """The target of a spawned worker. The process is ours, so it owns its signals: Ctrl-C (the terminal sends it
    to every worker) or SIGTERM asks its trial to stop after the current step, as `dlforge train` does, so the
    trial is told to the journal as interrupted between two writes, never in the middle of one."""
    import signal

    from dlforge.training.stop import StopRequest

    os.environ["OMP_NUM_THREADS"] = str(threads)
    stop = StopRequest()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, frame: stop.set())
    try:
        run_worker(out, worker, threads=threads, deadline=deadline, stop=stop)
    except TuneInterrupted:
        sys.exit(130)
    except KeyboardInterrupt:
        sys.exit(130)
    except DlforgeError as exc:
        _say(f"worker {worker}: {exc.render()}")
        sys.exit(2)


def _run_workers(out: Path, workers: int, threads: int, deadline: float | None, stop) -> None:
    if workers == 1:
        run_worker(out, 0, threads=threads, deadline=deadline, stop=stop)
        return
    import multiprocessing
    import signal

    context = multiprocessing.get_context("spawn")  # fresh interpreters: no forked torch thread pools
    procs = [context.Process(target=_worker_process, args=(str(out), i, threads, deadline), daemon=False)
             for i in range(workers)]
    for proc in procs:
        proc.start()
    forwarded = False
    try:
        while any(p.is_alive() for p in procs):
            if stop is not None and stop.is_set() and not forwarded:  # Ctrl-C or SIGTERM to this command
                for p in procs:
                    if p.is_alive() and p.pid:
                        os.kill(p.pid, signal.SIGTERM)  # each worker stops its trial after the current step
                forwarded = True
            for p in procs:
                p.join(timeout=0.5)
    except KeyboardInterrupt:  # the terminal sent SIGINT to the workers too; they record their trials and end
        for p in procs:
            p.join(timeout=30)
        raise TuneInterrupted(str(out)) from None
    codes = [p.exitcode for p in procs]
    if forwarded or any(code == 130 for code in codes):
        raise TuneInterrupted(str(out))
    bad = [(i, c) for i, c in enumerate(codes) if c not in (0, None)]
    if bad:
        raise DlforgeError(f"worker(s) {', '.join(str(i) for i, _ in bad)} ended with exit code(s) "
                           f"{', '.join(str(c) for _, c in bad)}; finished trials are kept", where=str(out),
                           hint=f"see the messages above; continue with: dlforge tune --resume {out}")


# ---------------------------------------------------------------- settings and resume
def read_settings(out: Path) -> dict:
    path = Path(out) / SETTINGS
    if not path.is_file():
        what = "no such folder" if not Path(out).exists() else f"no {SETTINGS}: this folder holds no tune study"
        raise DlforgeError(f"cannot resume: {what}", where=str(out),
                           hint=f"start a search with: dlforge tune RECIPE --out {out}")
    try:
        settings = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DlforgeError(f"{SETTINGS} cannot be read ({type(exc).__name__})", where=str(path),
                           hint="start the search over in a new --out folder") from None
    if not isinstance(settings, dict) or not {"study_name", "trials", "workers"} <= set(settings):
        raise DlforgeError(f"{SETTINGS} is not a dlforge tune settings file", where=str(path),
                           hint="start the search over in a new --out folder")
    return settings


def _searched_recipe(out: Path, settings: dict):
    recipe = load_recipe(out / "recipe.yaml")
    recipe._base_dir = settings.get("base_dir", recipe._base_dir)
    if recipe.tune is None:
        raise RecipeError(f"{out / 'recipe.yaml'}: has no tune section")
    return recipe


def _requeue_interrupted(study, out: Path) -> int:
    """Queue the parameters of every interrupted trial again, once: those a worker marked on Ctrl-C (FAIL,
    `interrupted`), and RUNNING trials whose process on this machine is gone (killed, rebooted), which are marked
    so first. Trials running elsewhere (an RDB shared by several machines) are left alone."""
    from optuna.trial import TrialState

    storage = study._storage  # Optuna has no public handle for changing another process's trial
    host, again = socket.gethostname(), 0
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get("retry_of") for t in trials}
    for t in trials:
        if t.state == TrialState.RUNNING:
            if t.user_attrs.get("host", host) != host or _alive(t.user_attrs.get("pid")):
                continue
            storage.set_trial_user_attr(t._trial_id, "interrupted", True)
            storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        elif t.state != TrialState.FAIL or not t.user_attrs.get("interrupted") or t.number in retried:
            continue
        if t.params:
            study.enqueue_trial(t.params, user_attrs={"retry_of": t.number}, skip_if_exists=False)
        again += 1
    return again


def _alive(pid) -> bool:
    if not isinstance(pid, int) or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    except OSError:
        return False
    return True


# ---------------------------------------------------------------- the search
def with_default_space(recipe):
    """`recipe` with a tune section for a recipe that has none: the learning rate from a tenth to ten times the
    recipe's (1e-4 to 1e-2 for lr: auto), the batch size halved and doubled, weight decay, dropout; the metric
    early stopping watches (else val.loss)."""
    config = recipe.training
    lr = config.optimizer.lr if isinstance(config.optimizer.lr, float) else 1e-3
    space = {"training.optimizer.lr": f"loguniform({lr / 10:.3g}, {lr * 10:.3g})",
             "training.optimizer.weight_decay": "loguniform(1e-5, 0.1)",
             "training.regularization.dropout": "uniform(0.0, 0.5)"}
    if isinstance(config.batch_size, int) and config.privacy is None:
        space["training.batch_size"] = f"choice({max(1, config.batch_size // 2)}, {config.batch_size}, " \
                                       f"{config.batch_size * 2})"
    metric = config.early_stopping.metric if config.early_stopping else "val.loss"
    data = recipe.model_dump(mode="json")
    data["tune"] = {"space": space, "metric": metric if metric.startswith("val.") else "val.loss"}
    with_space = validate(data)
    with_space._base_dir = recipe._base_dir
    return with_space


def tune(recipe=None, *, out: str | Path, trials: int | None = None, workers: int = 1, timeout: float | None = None,
         storage: str | None = None, study_name: str | None = None, resume: bool = False,
         overrides: list[str] | None = None, enqueue: list[dict] | None = None, stop=None, say=_say) -> TuneResult:
    """Search `recipe`'s tune.space (or continue the study in `out` with resume=True) and write the outputs.

    `enqueue`: parameter sets ({path: value}, choices as in the space) to evaluate before the sampler proposes
    any, e.g. the recipe's own values as a reference trial."""
    require_optuna()
    out = Path(out)
    if resume:
        settings = read_settings(out)
        if recipe is not None or overrides:
            raise DlforgeError("--resume continues a study with its saved recipe; do not pass a recipe or --set",
                               hint=f"dlforge tune --resume {out}")
        if trials is not None:
            settings["trials"] = trials
        if workers:
            settings["workers"] = workers
        searched = _searched_recipe(out, settings)
    else:
        searched = load_recipe(recipe, overrides)
        if searched.tune is None:
            searched = with_default_space(searched)
            say("no tune section in the recipe: searching the default space (write a tune: section to choose; "
                "see recipes/adult_tune.yaml):\n" + "\n".join(f"  {k}: {v}" for k, v in searched.tune.space.items())
                + f"\n  metric: {searched.tune.metric}")
        if (out / SETTINGS).exists():
            raise DlforgeError(f"{out} already holds a study", where="--out",
                               hint=f"continue it with: dlforge tune --resume {out}; or choose another --out")
        if out.exists() and any(out.iterdir()):
            raise DlforgeError(f"{out} exists and is not empty", where="--out", hint="choose a new or empty --out folder")
        settings = {"study_name": study_name or searched.name, "storage": storage,
                    "trials": trials or searched.tune.trials, "workers": workers,
                    "base_dir": str(recipe_base_dir(searched).resolve())}
    if settings["workers"] < 1:
        raise DlforgeError(f"--workers must be >= 1; got {settings['workers']}", where="--workers")
    if settings["trials"] < 1:
        raise DlforgeError(f"--trials must be >= 1; got {settings['trials']}", where="--trials")
    n_cores = cores()
    if settings["workers"] > n_cores:
        say(f"warning: {settings['workers']} workers on {n_cores} core(s): each trial's training shares a core with "
            f"others, so trials run slower and no more finish per hour; use --workers {n_cores} or fewer")
    threads = max(1, n_cores // settings["workers"])
    if searched.training.threads:
        say(f"note: the recipe sets training.threads: {searched.training.threads}; each trial uses that, not "
            f"{threads}")
    out.mkdir(parents=True, exist_ok=True)
    if not resume:
        write_text(out / "recipe.yaml", dump_recipe(searched))
    settings["threads_per_worker"] = threads
    write_json(out / SETTINGS, settings)
    study = open_study(settings, out, searched, create=not resume)
    for params in enqueue or []:
        study.enqueue_trial({k: json.dumps(list(v)) if isinstance(v, (list, tuple)) else v for k, v in params.items()})
    if resume:
        again = _requeue_interrupted(study, out)
        done = counted_trials(study)
        say(f"resuming study '{settings['study_name']}': {done} of {settings['trials']} trial(s) done or running"
            + (f"; {again} interrupted trial(s) marked failed and queued to run again" if again else ""))
    where = masked(settings["storage"]) or str(out / JOURNAL)
    if (settings["storage"] or "").startswith("sqlite") and settings["workers"] > 1:
        say("warning: several workers on one SQLite file fail with 'database is locked' (optuna#820); leave out "
            "--storage (a journal file in --out) on one machine, or use a server database across machines")
    say(f"search: {settings['trials']} trial(s), {settings['workers']} worker(s) x {threads} thread(s) "
        f"({n_cores} core(s)), sampler {searched.tune.sampler} (seed {searched.tune.seed}), pruner "
        f"{searched.tune.pruner}, {'maximize' if searched.tune.maximize() else 'minimize'} {searched.tune.metric}; "
        f"storage {where}" + (f"; timeout {timeout:.0f} s" if timeout else ""))
    deadline = time.time() + timeout if timeout else None
    started = time.perf_counter()
    from optuna.trial import TrialState

    waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    if counted_trials(study) >= settings["trials"] and not waiting:
        say(f"nothing to run: the study holds {settings['trials']} trial(s); raise the budget with --trials N")
        return write_outputs(out, settings, searched)
    try:
        _run_workers(out, settings["workers"], threads, deadline, stop)
    except TuneInterrupted:
        write_outputs(out, settings, searched)  # what finished is summarised before the command exits
        raise
    finally:
        settings["seconds"] = round(settings.get("seconds", 0.0) + time.perf_counter() - started, 1)
        write_json(out / SETTINGS, settings)
    return write_outputs(out, settings, searched)




__all__ = ["TuneInterrupted", "TuneResult", "cores", "parse_duration", "read_settings", "run_worker", "suggest",
           "trial_recipe", "tune", "write_outputs"]
