"""`dlforge init`: a starter recipe inferred from the data, one YAML comment per decision.

Each column is typed from its values (number, category, binary, text, image path, sequence),
dropped when it cannot help (an identifier, a constant, an empty column, a copy of the target), or
refused with the reason and what to write when no type fits. The result trains as written.
Free-text columns (which encoder, trained how, and why): workflows/init_text.py.
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
from dlforge.data.profile import (Choice, describe_column, describe_target, leak, missing_strings, ordered_runs,
                                   type_column, type_target)
from dlforge.workflows.init_text import choose_text_encoders, text_training


def infer_recipe(table: Table, source: str, target: str, *, drop: tuple[str, ...] = (), test: str | None = None,
                 pretrained: bool | None = None) -> str:
    """The recipe YAML text for `table`, predicting `target`.

    `test`: a separate labelled file to test on (all of `table` trains). `pretrained`: whether free text may use a
    pretrained encoder (None: when its packages are installed).
    """
    if target is None:
        raise missing_target(source, list(table.columns))
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
    inputs = _as_sequences(inputs, table)
    choose_text_encoders(table, [c for c in inputs if c.kind == "text"], pretrained)
    if not inputs:
        raise DataError("no usable input column: every other column was dropped", where=table.origin,
                        hint="; ".join(f"{c.name}: {c.why}" for c in dropped)[:300])
    balance = describe_target(table.columns[target], output["type"])
    return _render(source, target, output, output_why + (f"; {balance}" if balance else ""), inputs, dropped, table,
                   test=test)


def missing_target(source: str, columns: list[str]) -> DataError:
    """The error for a table given without the column to predict: it lists the columns and shows the command."""
    shown = ", ".join(columns[:30]) + (", ..." if len(columns) > 30 else "")
    example = columns[-1] if columns else "COLUMN"
    return DataError(f"{source} is data, not a recipe, and --target (the column to predict) is missing; "
                     f"its columns: {shown}", where="--target",
                     hint=f"dlforge train {source} --target {example}   (or write a recipe first: "
                          f"dlforge init {source} --target {example} -o recipe.yaml)")


def _as_sequences(inputs: list[Choice], table: Table) -> list[Choice]:
    """Runs of ordered, same-scale number columns (`x0 … x39`) become one sequence input read by a 1-D CNN."""
    numbers = [c.name for c in inputs if c.kind == "number"]
    runs = ordered_runs(table.columns, numbers)
    if not runs:
        return inputs
    taken = {name for run in runs for name in run}
    out = [c for c in inputs if c.name not in taken]
    for run in runs:
        stem = re.sub(r"[_\-. ]+$", "", re.match(r"^(.*?)\d+$", run[0]).group(1)) or "series"
        name = stem if stem not in table.columns else f"{stem}_series"
        out.append(Choice(name, "sequence", f"{len(run)} ordered number columns {run[0]} … {run[-1]} on one scale read "
                          "as one signal by a 1-D CNN (as separate numbers, their order is lost)",
                          {"columns": run, "encoder": {"name": "cnn", "channels": [32, 64, 32]}}))
    return out


def _input_entry(choice: Choice, table: Table) -> dict:
    """`{name, type}`, what the typing chose (`extra`), and the type's starter encoder/preprocessing (its kind)."""
    if choice.kind in ("text", "sequence") and choice.extra and "encoder" in choice.extra:
        return {"name": choice.name, "type": choice.kind, **choice.extra}
    return {"name": choice.name, "type": choice.kind, **(choice.extra or {}),
            **kind_of(choice.kind).init_entry(table.columns[choice.name])}


def _seen(choice: Choice, table: Table) -> str:
    values = table.columns.get(choice.name)
    seen = describe_column(values, choice.kind, table.n_rows) if values is not None else ""
    return f"; saw {seen}" if seen else ""


def _flow(data: dict) -> str:
    import yaml

    return yaml.safe_dump(data, default_flow_style=True, width=1000, sort_keys=False).strip()


def _render(source, target, output, output_why, inputs, dropped, table: Table, *, test: str | None = None) -> str:
    name = re.sub(r"[^a-z0-9]+", "-", Path(source.removeprefix("builtin:")).name.split(".")[0].lower()).strip("-")
    official = table.split is not None and (table.split == "test").any()
    stratify = output["type"] in ("binary", "category")
    if test and official:
        raise DataError(f"{source} has its own test split, and --test gives another", where="--test",
                        hint="drop --test, or give a file without a test split")
    note = holdout_note(source=source, test_source=test, official=official, val=0.1, test=0.2, seed=0,
                        stratify_by=target if stratify else None)
    lines = [f"# Written by `dlforge init {source} --target {target}"
             + (f" --test {test}" if test else "") + "`: one comment per column decision; edit freely.",
             f"name: {name or 'experiment'}",
             "data:",
             f"  source: {json.dumps(source)}"]
    if test:
        lines.append(f"  test_source: {json.dumps(test)}")
    lines.append(f"  split: {{val: 0.1, test: {'auto' if test else 'official' if official else 0.2}, seed: 0"
                 + ("" if stratify else ", stratify: false") + f"}}  # {note}")
    lines += _missing_lines(source)
    lines.append("inputs:")
    for choice in inputs:
        lines.append(f"  - {_flow(_input_entry(choice, table))}  # {choice.kind}: {choice.why}{_seen(choice, table)}")
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
    if tabular:
        lines += tabular_training(table.n_rows)
    else:
        lines += ["combiner: {name: concat, layers: [64, 32]}", "training:"]
        lines += text_training(inputs, table) or [
            "  epochs: 10",
            "  batch_size: 64",
            "  optimizer: {name: adam, lr: 0.001}",
            "  early_stopping: {metric: val.loss, patience: 3}"]
        lines += ["  seed: 0"]
    return "\n".join(lines) + "\n"


def _missing_lines(source: str) -> list[str]:
    """Comments on the strings that could mean a missing cell, and how many of each the file holds."""
    from dlforge.recipe import DataConfig

    found = missing_strings(source) if not source.startswith("builtin:") else {}
    empty = found.pop("", 0)
    lines = [f"# missing: {empty} empty cell(s)"] if empty else []
    if found:
        listing = ", ".join(f"{s!r} x{n}" for s, n in list(found.items())[:8])
        if "na_values" in DataConfig.model_fields:  # the reader reads only empty cells as missing by default
            lines.append(f"# kept as values (pandas would read them as missing): {listing}; to treat them as "
                         f"missing, add e.g. `na_values: {json.dumps(list(found)[:3])}` under data:")
        else:
            lines.append(f"# read as missing (pandas' default strings): {listing}")
    return lines


def summarize_inferred(text: str) -> list[str]:
    """A few lines about an inferred recipe (for `train DATA --target`): the target, the inputs by type and
    encoder, what was dropped, the held-out rows. `-v` prints the whole recipe instead."""
    import yaml

    data = yaml.safe_load(text)
    out = data["outputs"][0]
    kinds: dict[str, list[str]] = {}
    for entry in data["inputs"]:
        encoder = entry.get("encoder", {}).get("name")
        kinds.setdefault(entry["type"] + (f" ({encoder})" if encoder else ""), []).append(entry["name"])
    comment = {line.split("#", 1)[0].strip(): line.split("# ", 1)[-1] for line in text.splitlines() if "  # " in line}
    dropped = [line[4:] for line in text.splitlines() if line.startswith("#   ")]
    split = next((line.split("# ", 1)[1] for line in text.splitlines() if line.startswith("  split:")), "")
    lines = [f"inferred recipe: predict '{out['name']}' as {out['type']}"
             + (f" ({comment.get('- ' + _flow(out), '').split(': ', 1)[-1]})" if _flow(out) else ""),
             "  inputs: " + "; ".join(f"{len(names)} {kind}: {', '.join(names[:6])}{' ...' if len(names) > 6 else ''}"
                                      for kind, names in kinds.items())]
    for entry in data["inputs"]:  # which text encoder and why: the choice a newcomer most needs to know about
        if entry["type"] == "text":
            why = comment.get("- " + _flow(entry), "")
            why = why[why.find("encoder "):] if "encoder " in why else ""
            lines.append(f"  text '{entry['name']}': {why.split('; saw ')[0]}" if why else
                         f"  text '{entry['name']}': encoder {entry.get('encoder', {}).get('name', 'default')}")
    folds = (data.get("training") or {}).get("cross_fit", 1)
    if folds > 1:  # k trainings instead of one: a newcomer should know why the run takes k times as long
        lines.append(f"  cross-fit: {comment.get(f'cross_fit: {folds}', f'{folds} members, averaged')}")
    if dropped:
        lines.append(f"  dropped: {'; '.join(d[:60] for d in dropped[:6])}{' ...' if len(dropped) > 6 else ''}")
    if split:
        lines.append(f"  {split}")
    lines.append("  (the whole recipe with a reason per column: -v, or inferred_recipe.yaml in the run directory)")
    return lines


def holdout_note(*, source: str, test_source: str | None, official: bool, val: float, test, seed: int,
                 stratify_by: str | None, rows: dict[str, int] | None = None) -> str:
    """One sentence: which rows test the model and why (printed by `train`, a comment in `init`'s recipe)."""
    n = f"{rows['test']} rows" if rows and "test" in rows else "the rows"
    if test_source:
        return f"test: {n} from {test_source} (--test); every row of {source} trains, less {val:.0%} for validation"
    if official:
        return f"test: the data's own test split ({n})" if rows else "test: the data's own test split"
    fraction = 0.2 if test == "auto" else float(test)
    if fraction == 0:
        return "test: none (data.split.test=0): scores are on the validation rows, which also pick the best epoch"
    how = f"stratified by '{stratify_by}', " if stratify_by else ""
    return (f"test: {n} held out ({fraction:.0%} of the data, {how}seed {seed}) because the data has no test "
            "split of its own and a model is judged on rows it never trained on; to train on every row, pass "
            "--test FILE (a separate labelled file) or --set data.split.test=0 (no test score)")



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
CROSS_FIT_ROWS = 3_000  # under this many rows, a 5-fold cross-fit ensemble (5 trainings, each of a small table)
CROSS_FIT_FOLDS = 5


def tabular_training(n_rows: int) -> list[str]:
    """The strong tabular default (issue #12; RealMLP, Holzmüller et al. 2024, and TabM, Gorishniy et al. 2024, as
    guides): an MLP over number embeddings, AdamW with weight decay, dropout, and early stopping on the validation
    loss with the best epoch restored. The MLP is a TabM-mini ensemble of two 128-wide layers, 8 members under
    ENSEMBLE_ROWS rows and 4 above (seed 0, one MLP of two 256-wide layers → the ensemble: compas accuracy 0.982
    → 0.988, adult 0.864 → 0.866 with ROC-AUC 0.917 → 0.919, for about 2-3x the compute; benchmarks/tabular.md
    has the figures over seeds). Batches grow with the table, and the epoch ceiling keeps about 20,000 steps.

    Under CROSS_FIT_ROWS rows the run is a 5-fold cross-fit ensemble (training.cross_fit; AutoGluon's bagging):
    german_credit (1,000 rows, 80 validation rows) stopped on the noise of its validation share (best epochs 7-14,
    accuracy 0.725 / ROC-AUC 0.810, mean of seeds 0-2); 5 members, each stopped on 160 held-out rows, reached
    0.757 / 0.834, where HistGradientBoosting on the same 800 rows gets 0.755 / 0.823. Also tried with the
    ensemble (same seeds): weight decay 0.1 0.763 / 0.833, dropout 0.3 0.763 / 0.833, both 0.758 / 0.832, lr 3e-4
    0.753 / 0.832: within a test row or two of each other, so the regularisation stays as for larger tables. The
    cost is 5 trainings of a small table (german_credit: about 10 s CPU)."""
    batch = 64 if n_rows < 2_000 else 128 if n_rows < 10_000 else 256
    steps_per_epoch = max(1, int(n_rows * 0.72) // batch)  # the train share of an 80/20 then 90/10 split
    epochs = int(min(100, max(30, 20_000 // steps_per_epoch)))
    members = 8 if n_rows < ENSEMBLE_ROWS else 4
    combiner = (f"combiner: {{name: concat, layers: [128, 128], ensemble: {members}}}  # TabM-mini: {members} MLPs "
                "in one batched pass, their predictions averaged")
    lines = [combiner,
             "training:",
             f"  epochs: {epochs}  # a ceiling: early stopping ends training when val.loss stops improving",
             f"  batch_size: {batch}",
             "  optimizer: {name: adamw, lr: 0.001, weight_decay: 0.01}",
             "  regularization: {dropout: 0.1}",
             "  early_stopping: {metric: val.loss, patience: 8}  # the best epoch's weights are kept"]
    if n_rows < CROSS_FIT_ROWS:
        lines.append(f"  cross_fit: {CROSS_FIT_FOLDS}  # {n_rows:,} rows: a 10% validation share would be too few rows "
                     f"to stop on; {CROSS_FIT_FOLDS} members, each early-stopped on its own fold of the train+val "
                     "rows, predictions averaged")
    return lines + ["  seed: 0"]


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


def init(data: str | Path, target: str | None, *, out: str | Path | None = None, drop: tuple[str, ...] = (),
         test: str | None = None, pretrained: bool | None = None, baseline: bool = True) -> str:
    """Infer a recipe for `data` (a path or builtin:NAME) predicting `target`; write it to `out` when given.

    With `baseline` (tabular recipes), quick scikit-learn scores on the recipe's split end the text as comments."""
    from dlforge.data.readers import load_table
    from dlforge.core.files import write_text

    source = str(data)
    if test is not None:
        load_table(test, field="--test")  # a missing or unreadable test file fails now, not after training
    table = load_table(source)
    text = infer_recipe(table, source, target, drop=tuple(drop), test=test, pretrained=pretrained)
    if baseline:
        text += baseline_comment(text, table)
    if out is not None:
        write_text(Path(out), text)
    return text
