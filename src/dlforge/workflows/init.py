"""`dlforge init`: a starter recipe inferred from the data, one YAML comment per decision.

Each column is typed from its values (number, category, binary, text, image path, sequence),
dropped when it cannot help (an identifier, a constant, an empty column, a copy of the target), or
refused with the reason and what to write when no type fits. The result trains as written.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

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
    lines += ["outputs:", f"  - {_flow(output)}  # {output_why}",
              "combiner: {name: concat, layers: [64, 32]}",
              "training:",
              "  epochs: 10",
              "  batch_size: 64",
              "  optimizer: {name: adam, lr: 0.001}",
              "  early_stopping: {metric: val.loss, patience: 3}",
              "  seed: 0", ""]
    return "\n".join(lines)


def init(data: str | Path, target: str, *, out: str | Path | None = None, drop: tuple[str, ...] = ()) -> str:
    """Infer a recipe for `data` (a path or builtin:NAME) predicting `target`; write it to `out` when given."""
    from dlforge.data.readers import load_table
    from dlforge.core.files import write_text

    source = str(data)
    text = infer_recipe(load_table(source), source, target, drop=tuple(drop))
    if out is not None:
        write_text(Path(out), text)
    return text
