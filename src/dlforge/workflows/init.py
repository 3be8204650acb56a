"""`dlforge init`: a starter recipe inferred from the data, one YAML comment per decision.

Each column is typed from its values (number, category, binary, text, image path, sequence),
dropped when it cannot help (an identifier, a constant, an empty column, a copy of the target), or
refused with the reason and what to write when no type fits. The result trains as written.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd

from dlforge.data.table import Table
from dlforge.core.errors import DataError, did_you_mean
from dlforge.data.features import kind_of
from dlforge.data.profile import Choice, leak, type_column, type_target


def infer_recipe(table: Table, source: str, target: str, *, drop: tuple[str, ...] = ()) -> str:
    """The recipe YAML text for `table`, predicting `target`."""
    if target not in table.columns:
        raise DataError(f"target column '{target}' is not in the data{did_you_mean(target, list(table.columns))}",
                        where="--target", hint=f"columns: {', '.join(table.columns)}")
    output, output_why = type_target(target, table.columns[target])
    inputs, dropped = [], []
    for name, values in table.columns.items():
        if name == target:
            continue
        if name in drop:
            dropped.append(Choice(name, "drop", "--drop"))
            continue
        choice = type_column(name, values, root=table.root, n_rows=table.n_rows)
        if choice.kind in ("binary", "category", "number") and output["type"] in ("binary", "category"):
            reason = leak(values, table.columns[target], target)
            choice = Choice(name, "drop", reason) if reason else choice
        (dropped if choice.kind == "drop" else inputs).append(choice)
    if not inputs:
        raise DataError("no usable input column: every other column was dropped", where=table.origin,
                        hint="; ".join(f"{c.name}: {c.why}" for c in dropped)[:300])
    return _render(source, target, output, output_why, inputs, dropped, table)


def _input_entry(choice: Choice, table: Table) -> dict:
    """`{name, type}`, what the typing chose (`extra`), and the type's starter encoder/preprocessing (its kind)."""
    return {"name": choice.name, "type": choice.kind, **(choice.extra or {}),
            **kind_of(choice.kind).init_entry(table.columns[choice.name])}


def _flow(data: dict) -> str:
    import yaml

    return yaml.safe_dump(data, default_flow_style=True, width=1000, sort_keys=False).strip()


def _render(source, target, output, output_why, inputs, dropped, table: Table) -> str:
    name = re.sub(r"[^a-z0-9]+", "-", Path(source.removeprefix("builtin:")).name.split(".")[0].lower()).strip("-")
    official = table.split is not None and (table.split == "test").any()
    lines = [f"# Written by `dlforge init {source} --target {target}`: one comment per column decision; edit freely.",
             f"name: {name or 'experiment'}",
             "data:",
             f"  source: {json.dumps(source)}",
             f"  split: {{val: 0.1, test: {'official' if official else 0.2}, seed: 0}}"
             + ("  # the data's own test rows" if official else ""),
             "inputs:"]
    for choice in inputs:
        lines.append(f"  - {_flow(_input_entry(choice, table))}  # {choice.kind}: {choice.why}")
    if dropped:
        lines.append("# dropped columns:")
        lines += [f"#   {c.name}: {c.why}" for c in dropped]
    tabular = all(c.kind in TABULAR for c in inputs)
    if tabular:
        extra, note = class_balance(output, table.columns[target])
        output, output_why = {**output, **extra}, output_why + note
    extra, note = target_transform(output, table.columns[target])
    output, output_why = {**output, **extra}, output_why + note
    lines += ["outputs:", f"  - {_flow(output)}  # {output_why}"]
    lines += tabular_training(table.n_rows) if tabular else [
        "combiner: {name: concat, layers: [64, 32]}",
        "training:",
        "  epochs: 10",
        "  batch_size: 64",
        "  optimizer: {name: adam, lr: 0.001}",
        "  early_stopping: {metric: val.loss, patience: 3}",
        "  seed: 0"]
    return "\n".join(lines) + "\n"


TABULAR = ("number", "category", "binary")
IMBALANCE = 0.2  # a class under this share of the rows is "rare": accuracy alone then says little


def class_balance(output: dict, values) -> tuple[dict, str]:
    """What the target's class balance asks of the recipe, and the comment saying so.

    A category target with a rare class gets `class_weights: balanced` (the loss weighs classes by inverse
    frequency, which lifts macro-F1 at some cost in accuracy). A binary target with a rare class gets the
    suggestion only: a positive weight moves the decision threshold, and at threshold 0.5 it trades accuracy for
    the rare class's recall, a choice the user makes (`pos_weight: balanced`, or a `threshold`)."""
    import pandas as pd

    from dlforge.data.features.base import as_strings

    if output["type"] not in ("binary", "category"):
        return {}, ""
    counts = pd.Series([v for v in as_strings(values) if v is not None]).value_counts()
    share = counts / counts.sum()
    if share.min() >= IMBALANCE:
        return {}, ""
    rare = f"'{share.index[-1]}' is {share.iloc[-1]:.1%} of the rows"
    if output["type"] == "category":
        return ({"class_weights": "balanced"},
                f"; imbalanced ({rare}): class_weights balanced (inverse frequency; set none to maximise accuracy)")
    return {}, (f"; imbalanced ({rare}; always '{share.index[0]}' scores accuracy {share.iloc[0]:.3f}): watch "
                "roc_auc/pr_auc; for more recall of the rare class add pos_weight: balanced (costs accuracy)")


def target_transform(output: dict, values) -> tuple[dict, str]:
    """A positive, right-skewed number target (prices, amounts, counts) is learnt in log space: squared errors
    on log(1 + y) weigh a 10% miss alike at every scale, where on y the few largest values would dominate.
    Predictions, metrics and served values are mapped back (the transform is stored with the model)."""
    from dlforge.data.features.number import SKEW_LIMIT, skewness

    if output["type"] != "number":
        return {}, ""
    numbers = np.asarray(pd.to_numeric(pd.Series(values), errors="coerce"), dtype=np.float64)
    numbers = numbers[np.isfinite(numbers)]
    skew = skewness(numbers)
    if len(numbers) == 0 or numbers.min() < 0 or skew <= SKEW_LIMIT:
        return {}, ""
    return {"transform": "log"}, f"; positive and skewed (skewness {skew:.1f}): trained on log(1 + y), mapped back"


ENSEMBLE_ROWS = 20_000  # from this size on, 4 ensemble members instead of 8: the cost stays within a minute


def tabular_training(n_rows: int) -> list[str]:
    """The strong tabular default (issue #12; RealMLP, Holzmüller et al. 2024, and TabM, Gorishniy et al. 2024, as
    guides): an MLP over number embeddings, AdamW with weight decay, dropout, and early stopping on the validation
    loss with the best epoch restored. The MLP is a TabM-mini ensemble of two 128-wide layers, 8 members under
    ENSEMBLE_ROWS rows and 4 above (seed 0, one MLP of two 256-wide layers → the ensemble: compas accuracy 0.982
    → 0.988, adult 0.864 → 0.866 with ROC-AUC 0.917 → 0.919, for about 2-3x the compute; benchmarks/tabular.md
    has the figures over seeds). Batches grow with the table, and the epoch ceiling keeps about 20,000 steps."""
    batch = 64 if n_rows < 2_000 else 128 if n_rows < 10_000 else 256
    steps_per_epoch = max(1, int(n_rows * 0.72) // batch)  # the train share of an 80/20 then 90/10 split
    epochs = int(min(100, max(30, 20_000 // steps_per_epoch)))
    members = 8 if n_rows < ENSEMBLE_ROWS else 4
    combiner = (f"combiner: {{name: concat, layers: [128, 128], ensemble: {members}}}  # TabM-mini: {members} MLPs "
                "in one batched pass, their predictions averaged")
    return [combiner,
            "training:",
            f"  epochs: {epochs}  # a ceiling: early stopping ends training when val.loss stops improving",
            f"  batch_size: {batch}",
            "  optimizer: {name: adamw, lr: 0.001, weight_decay: 0.01}",
            "  regularization: {dropout: 0.1}",
            "  early_stopping: {metric: val.loss, patience: 8}  # the best epoch's weights are kept",
            "  seed: 0"]


def baseline_comment(text: str, table: Table) -> str:
    """Comment lines with quick scikit-learn baselines on the recipe's own split (tabular recipes only): the
    score a network has to beat before deep learning pays. Empty when it does not apply."""
    import yaml

    from dlforge.data.prepare import prepare
    from dlforge.evaluation.baseline import applies, fit_baseline, sklearn_missing
    from dlforge.recipe.io import load_recipe
    from dlforge.training.setup import output_scales

    recipe = load_recipe(yaml.safe_load(text))
    if any(f.type not in ("number", "category", "binary") for f in [*recipe.inputs, *recipe.outputs]):
        return ""
    notice = sklearn_missing()
    if notice:
        return f"# {notice}\n"
    prepared = prepare(recipe, table=table)
    if not applies(prepared.signature()):
        return ""
    result = fit_baseline(prepared.splits, prepared.signature(), seed=recipe.training.seed,
                          units=output_scales(prepared), threads=recipe.training.threads)
    if "skipped" in result:
        return f"# {result['skipped']}\n"
    keys = ("accuracy", "roc_auc", "rmse", "r2", "mae")
    lines = [f"# baseline (scikit-learn, same split, scored on the {result['split']} rows; `--no-baseline` skips it):"]
    for model, values in result.items():
        if isinstance(values, dict):
            scores = ", ".join(f"{k} {values[k]:.4f}" for k in keys if k in values)
            lines.append(f"#   {model}: {scores} (fit in {values['fit_seconds']:.1f} s)")
    return "\n".join(lines) + "\n"


def init(data: str | Path, target: str, *, out: str | Path | None = None, drop: tuple[str, ...] = (),
         baseline: bool = True) -> str:
    """Infer a recipe for `data` (a path or builtin:NAME) predicting `target`; write it to `out` when given.

    With `baseline` (tabular recipes), quick scikit-learn scores on the recipe's split end the text as comments."""
    from dlforge.data.readers import load_table
    from dlforge.core.files import write_text

    source = str(data)
    table = load_table(source)
    text = infer_recipe(table, source, target, drop=tuple(drop))
    if baseline:
        text += baseline_comment(text, table)
    if out is not None:
        write_text(Path(out), text)
    return text
