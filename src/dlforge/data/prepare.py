"""From a recipe to tensors: read the source, split, fit features on train, encode every split once."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from dlforge.data.features import Feature, TargetFeature, input_features, output_features
from dlforge.data.features.base import as_strings
from dlforge.data.readers import ReadOptions, load_table
from dlforge.data.interactions import link_catalogue, prepare_interactions
from dlforge.data.split import check_classes_in_train, split_rows
from dlforge.data.table import Table
from dlforge.core.errors import DataError


@dataclass
class Encoded:
    """One split as tensors: inputs by name, targets by name; row i of every tensor is the same example."""

    x: dict[str, torch.Tensor]
    y: dict[str, torch.Tensor]

    def __len__(self) -> int:
        return len(next(iter(self.x.values())))


@dataclass
class Prepared:
    inputs: dict[str, Feature]
    outputs: dict[str, TargetFeature]
    splits: dict[str, Encoded]
    report: dict = field(default_factory=dict)

    def signature(self) -> dict:
        return signature(self.inputs, self.outputs)


def describe(report: dict) -> list[str]:
    """What the data became, in lines for the terminal: rows per split, every value a policy changed, every note
    of the reader (a split column), every skipped file. Training and `recipe check` print the same lines, so
    nothing that metrics.json records about the data is left unsaid."""
    rows = ", ".join(f"{part} {n}" for part, n in report["rows"].items())
    lines = [f"data: {report['source']}: {rows}" + (" (official test split)" if report["official_split"] else "")]
    for column, counts in report["policies"].items():
        lines += [f"  {column}: {n} value(s) {policy.replace('_', ' ')}" for policy, n in counts.items()]
    lines += [f"note: {note}" for note in report.get("notes", [])]
    for column, images in report.get("images", {}).items():
        if images.get("skipped_bad_files"):
            examples = ", ".join(images.get("skipped_examples", []))
            lines.append(f"warning: {column}: skipped {images['skipped_bad_files']} image file(s) that do not decode "
                         f"(on_bad_file: skip){', e.g. ' + examples if examples else ''}")
    return lines


def build_features(recipe) -> tuple[dict[str, Feature], dict[str, TargetFeature]]:
    """Unfitted features for every input and output of the recipe."""
    inputs = {f.name: input_features.get(f.type)(f, field_path=f"inputs.{i}") for i, f in enumerate(recipe.inputs)}
    outputs = {f.name: output_features.get(f.type)(f, field_path=f"outputs.{i}") for i, f in enumerate(recipe.outputs)}
    return inputs, outputs


def signature(inputs: dict[str, Feature], outputs: dict[str, TargetFeature]) -> dict:
    return {"inputs": {n: f.signature() for n, f in inputs.items()},
            "outputs": {n: f.signature() for n, f in outputs.items()}}


def encode(table: Table, inputs: dict[str, Feature], outputs: dict[str, TargetFeature] | None,
           *, lazy: dict | None = None, cache_dir: str | None = None) -> Encoded:
    """Every column through its fitted feature; image columns planned for streaming stay lazy (paths)."""
    from dlforge.data.images.streaming import LazyImages

    lazy = lazy or {}
    x = {name: (LazyImages(table.columns[name], lazy[name], feat.scale, cache_dir) if name in lazy
                else feat.transform(table.column(name, field_path=feat.field_path)))
         for name, feat in inputs.items()}
    y = {name: feat.transform(table.column(name, field_path=feat.field_path)) for name, feat in (outputs or {}).items()}
    return Encoded(x, y)


def split_groups(recipe, table: Table) -> np.ndarray | None:
    """The `data.split.group` column (None when the recipe has none): rows that must share a split."""
    name = recipe.data.split.group
    return None if name is None else as_strings(table.column(name, field_path="data.split.group"))


def stratify_labels(recipe, table: Table) -> np.ndarray | None:
    first = recipe.outputs[0]
    if not recipe.data.split.stratify or first.type not in ("category", "binary"):
        return None
    return as_strings(table.column(first.name, field_path="outputs.0"))


def read_table(recipe, base_dir: Path | None = None) -> Table:
    table = load_table(recipe.data.source, fmt=recipe.data.format, base_dir=base_dir,
                       options=ReadOptions.of(recipe.data))
    if recipe.data.test_source:
        table = with_test_rows(table, load_table(recipe.data.test_source, base_dir=base_dir, field="data.test_source",
                                                 options=ReadOptions.of(recipe.data)),
                               needed=[f.name for f in (*recipe.inputs, *recipe.outputs)])
    # Recommendation: side tables joined, repeated (user, item) pairs by policy, the leave-last-out split.
    table, _ = prepare_interactions(recipe, table, lambda source, where: load_table(
        source, base_dir=base_dir, field=where, options=ReadOptions.of(recipe.data)))
    for i, f in enumerate(recipe.inputs):
        if f.type == "sequence" and f.columns:
            table = _stack_columns(table, f, f"inputs.{i}")
    # Check every named column before any work, so a typo fails in a second, not after loading features.
    for i, f in enumerate(recipe.inputs):
        table.column(f.name, field_path=f"inputs.{i}.name")
    for i, f in enumerate(recipe.outputs):
        table.column(f.name, field_path=f"outputs.{i}.name")
    if recipe.data.split.group is not None:
        groups = split_groups(recipe, table)
        if any(g is None for g in groups.tolist()):
            raise DataError(f"the group column '{recipe.data.split.group}' has empty cells", where="data.split.group",
                            hint="fill them (each row needs a group), or drop data.split.group")
    if recipe.data.max_rows and recipe.data.max_rows < table.n_rows:
        rng = np.random.default_rng(recipe.data.split.seed)
        keep = np.sort(rng.choice(table.n_rows, recipe.data.max_rows, replace=False))
        table = table.take(keep)
    return table


def with_test_rows(table: Table, test: Table, *, needed: list[str]) -> Table:
    """`table`'s rows (to train and validate on) followed by `test`'s rows marked as the official test split.

    Columns missing from the test file that the recipe does not use are left out; a used one is an error.
    """
    if table.split is not None and (table.split == "test").any():
        raise DataError(f"{table.origin} has its own test split, and data.test_source gives another",
                        where="data.test_source", hint="drop --test / data.test_source, or train on a file without "
                        "a test split (a 'split' column or a test.csv in the folder)")
    absent = [c for c in table.columns if c not in test.columns and c in needed]
    if absent:
        raise DataError(f"the test file lacks column(s) {absent[:5]} that the recipe uses", where="data.test_source",
                        hint=f"the test file needs the same columns as the training data; it has: "
                             f"{', '.join(list(test.columns)[:20])}")
    names = [c for c in table.columns if c in test.columns]
    columns = {c: np.concatenate([table.columns[c], test.columns[c]]) for c in names}
    own = table.split if table.split is not None else np.full(table.n_rows, "train", dtype=object)
    split = np.concatenate([own.astype(object), np.full(test.n_rows, "test", dtype=object)])
    return Table(columns, table.origin, split, list(table.notes) + [f"test rows: {test.n_rows} from {test.origin}"],
                 table.root)


def _stack_columns(table: Table, feature, field_path: str) -> Table:
    """Wide tables: the listed numeric columns become one (n, 1, steps) series column named after the input."""
    from dlforge.data.features.number import to_float

    if feature.name in table.columns:
        raise DataError(f"input '{feature.name}' builds a series from `columns`, but a column of that name exists",
                        where=f"{field_path}.name", hint="give the sequence input a new name, e.g. 'series'")
    steps = [to_float(table.column(c, field_path=f"{field_path}.columns"), name=c, where=f"{field_path}.columns")
             for c in feature.columns]
    columns = {k: v for k, v in table.columns.items() if k not in feature.columns}
    columns[feature.name] = np.stack(steps, axis=1)[:, None, :].astype(np.float32)
    return Table(columns, table.origin, table.split, list(table.notes), table.root, table.split_column)


def prepare(recipe, *, base_dir: Path | None = None, table: Table | None = None,
            fitted: dict[str, dict] | None = None) -> Prepared:
    """The recipe's data read, checked, split, its features fitted on the training split and every split encoded.

    `fitted`: input name -> a feature state (`Feature.state()`) taken as it is instead of fitting that input (a
    distilled student that reads its teacher's tokens)."""
    from dlforge.data.features.audio import prepare_audio_files
    from dlforge.data.images.files import prepare_image_files

    table = table if table is not None else read_table(recipe, base_dir)
    # Image and audio files are checked (and, in memory, decoded) before the split, so skipped files drop whole rows.
    table, image_plans, image_report = prepare_image_files(recipe, table)
    table, audio_report = prepare_audio_files(recipe, table)
    streamed = {n: p for n, p in image_plans.items() if p.stream}
    inputs, outputs = build_features(recipe)
    for name, feat in {**inputs, **outputs}.items():
        if name not in streamed:
            feat.check(table.column(name, field_path=feat.field_path))
    labels = stratify_labels(recipe, table)
    cfg = recipe.data.split
    rows = split_rows(table.n_rows, official=table.split, labels=labels, val=cfg.val, test=cfg.test, seed=cfg.seed,
                      groups=split_groups(recipe, table))
    if len(rows["train"]) == 0:
        raise DataError("the training split is empty", where="data.split", hint="use more rows or smaller val/test fractions")
    if labels is not None:
        check_classes_in_train(labels, rows, recipe.outputs[0].name)
    train_table = table.take(rows["train"])
    for name, plan in streamed.items():  # streamed files decode to the channels/size chosen from all headers
        inputs[name].channels_, inputs[name].size_ = plan.channels, list(plan.size)
    for name, feat in {**inputs, **outputs}.items():
        if fitted and name in fitted:
            feat.load_state(fitted[name])
        else:
            feat.fit(train_table.column(name, field_path=feat.field_path))
    link_catalogue(inputs, outputs)
    splits = {part: encode(table.take(r) if part != "train" else train_table, inputs, outputs, lazy=streamed,
                           cache_dir=recipe.data.cache_dir)
              for part, r in rows.items() if len(r)}
    report = {
        "source": table.origin,
        "rows": {part: int(len(r)) for part, r in rows.items()},
        "official_split": table.split is not None and (table.split == "test").any(),
        "policies": {name: feat.report for name, feat in {**inputs, **outputs}.items() if feat.report},
    }
    if image_report:
        report["images"] = image_report
    if audio_report:
        report["audio"] = audio_report
    if table.notes:
        report["notes"] = list(table.notes)
    return Prepared(inputs, outputs, splits, report)
