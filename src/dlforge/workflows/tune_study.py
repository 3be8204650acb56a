"""The Optuna side of `dlforge tune`: storage, sampler, pruner, the study, and a trial's recipe.

Optuna is imported lazily (the `tune` extra); nothing here trains or spawns a process.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from dlforge.core.errors import DlforgeError
from dlforge.recipe.io import validate
from dlforge.recipe.tune import set_path

SETTINGS = "tune.json"
JOURNAL = "study.journal"
LOCK = "tune.lock"
TRIALS_DIR = "trials"


@dataclass
class TuneResult:
    out: Path
    best: dict | None  # {"number", "value", "params", "run_dir"} or None when no trial completed
    counts: dict[str, int]
    files: dict[str, Path] = field(default_factory=dict)


def require_optuna():
    try:
        import optuna
    except ImportError:
        raise DlforgeError("dlforge tune needs Optuna, which is not installed",
                           hint="pip install 'dlforge[tune]'") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # each trial is reported by us, in one line
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


def journal_storage(settings: dict, out: Path):
    optuna = require_optuna()
    if settings.get("storage"):
        return settings["storage"]  # an RDB URL: Optuna builds RDBStorage from it
    from optuna.storages.journal import JournalFileBackend

    return optuna.storages.JournalStorage(JournalFileBackend(str(out / JOURNAL)))


def _sampler(config, worker: int, workers: int, done: int = 0):
    """Seeded from (tune.seed, worker, trials already in the study): each worker its own stream (or they would
    propose the same trials), and a resumed worker a new one (or it would propose its first trials again)."""
    import numpy as np

    optuna = require_optuna()
    seed = int(np.random.SeedSequence([config.seed, worker, done]).generate_state(1)[0])
    if config.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    # The constant liar makes parallel TPE workers avoid the points the others are evaluating right now.
    return optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=workers > 1)


def _pruner(config, epochs: int):
    optuna = require_optuna()
    if config.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(epochs, 1), reduction_factor=3)
    if config.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=config.warmup_trials, n_warmup_steps=1)
    return optuna.pruners.NopPruner()


def open_study(settings: dict, out: Path, recipe, *, worker: int = 0, create: bool = False):
    optuna = require_optuna()
    config = recipe.tune
    storage = journal_storage(settings, out)
    done = 0
    if not create:
        try:
            done = len(optuna.load_study(study_name=settings["study_name"], storage=storage).trials)
        except KeyError:
            raise DlforgeError(f"study '{settings['study_name']}' is not in its storage", where=str(out),
                               hint=f"start a new search: dlforge tune RECIPE --out {out}") from None
    kwargs = dict(study_name=settings["study_name"], storage=storage,
                  sampler=_sampler(config, worker, settings["workers"], done),
                  pruner=_pruner(config, recipe.training.epochs))
    if create:
        return optuna.create_study(direction="maximize" if config.maximize() else "minimize", load_if_exists=True,
                                   **kwargs)
    return optuna.load_study(**kwargs)


def counted_trials(study) -> int:
    """Trials that use up the budget: complete, pruned, running, and failed ones other than interrupted."""
    from optuna.trial import TrialState

    return sum(1 for t in study.get_trials(deepcopy=False)
               if t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
               or (t.state == TrialState.FAIL and not t.user_attrs.get("interrupted")))


def _choice_labels(dist) -> dict:
    """Optuna's categorical values are scalars: a list choice such as [128, 64] is offered as its JSON text."""
    return {(json.dumps(list(c)) if isinstance(c, tuple) else c): (list(c) if isinstance(c, tuple) else c)
            for c in dist.choices}


def suggest(trial, recipe) -> dict:
    """{path: value} sampled by `trial` for every distribution of the recipe's tune.space."""
    params = {}
    for path, dist in recipe.tune.distributions().items():
        if dist.kind == "choice":
            labels = _choice_labels(dist)
            params[path] = labels[trial.suggest_categorical(path, list(labels))]
        elif dist.kind == "int":
            params[path] = trial.suggest_int(path, dist.low, dist.high, step=dist.step or 1, log=dist.log)
        else:
            params[path] = trial.suggest_float(path, float(dist.low), float(dist.high), step=dist.step, log=dist.log)
    return params


def decoded(recipe, params: dict) -> dict:
    """A trial's parameters as the recipe reads them: a list choice back from its JSON label."""
    out = {}
    for path, value in params.items():
        dist = recipe.tune.distributions().get(path)
        out[path] = _choice_labels(dist).get(value, value) if dist is not None and dist.kind == "choice" else value
    return out


def trial_recipe(recipe, params: dict, *, name: str | None = None):
    """The searched recipe with `params` set and no tune section, validated as any recipe (RecipeError if not)."""
    data = recipe.model_dump(mode="json", exclude={"tune"})
    for path, value in params.items():
        data = set_path(data, path, value)
    if name:
        data["name"] = name
    sampled = validate(data)
    sampled._base_dir = recipe._base_dir
    return sampled


def short_value(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def best_trial(study):
    try:
        return study.best_trial
    except ValueError:  # no completed trial yet
        return None


def masked(url: str | None) -> str | None:
    """A storage URL as it may be printed: its password replaced by ***."""
    if not url:
        return url
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.password:
        return url.replace(f":{parts.password}@", ":***@", 1)
    return url
