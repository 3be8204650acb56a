"""The one way into a model: what a caller hands over (records, dicts, DataFrames, arrays, image paths, or a
table read from a CSV/Parquet file) becomes a Table with exactly the model's input columns.

`Predictor.predict`, `Predictor.evaluate`, `dlforge predict --data`, `dlforge.evaluate(run, data=...)` all
come through here, so they agree on every detail: image paths in a file are relative to that file's
folder, wrong shapes are refused with the expected form. Per-type coercion belongs to the input's
kind (data/features/<type>.py); the server, whose values pydantic has already validated, uses the
kinds' `request_column` directly.
"""

from __future__ import annotations


from dlforge.core.errors import PredictError
from dlforge.data.features import kind_of
from dlforge.data.table import Table


def _describe(inputs: dict) -> str:
    return ", ".join(f"{n} ({s['type']}{' ' + 'x'.join(map(str, s['shape'])) if 'shape' in s else ''})"
                     for n, s in inputs.items())


def to_table(data, inputs: dict[str, dict]) -> Table:
    """A Table with exactly the model's input columns (a Table is taken as read from its file: see `from_table`)."""
    if isinstance(data, Table):
        table = from_table(data, inputs)
        if not table.n_rows:
            raise PredictError("nothing to predict: the input has no rows", where=table.origin)
        return table
    names = list(inputs)
    if hasattr(data, "to_dict") and hasattr(data, "columns"):  # a pandas DataFrame
        data = {str(c): data[c].to_numpy() for c in data.columns}
    elif isinstance(data, list) and data and all(isinstance(r, dict) for r in data):
        missing = sorted({n for r in data for n in names if n not in r})
        if missing:
            raise PredictError(f"records lack input(s) {missing}", hint=f"each record needs: {_describe(inputs)}")
        data = {n: [r[n] for r in data] for n in names}
    elif not isinstance(data, dict):
        if len(names) != 1:
            raise PredictError(f"this model has {len(names)} inputs; pass a dict, records or a DataFrame",
                               hint=f"inputs: {_describe(inputs)}")
        data = {names[0]: data}
    missing = [n for n in names if n not in data]
    if missing:
        raise PredictError(f"input(s) {missing} are missing; got {sorted(map(str, data))}",
                           hint=f"the model expects: {_describe(inputs)}")
    columns = {n: kind_of(inputs[n]).python_column(data[n], inputs[n], n) for n in names}
    lengths = {n: len(c) for n, c in columns.items()}
    if len(set(lengths.values())) > 1:
        raise PredictError(f"inputs have different numbers of rows: {lengths}")
    if not lengths or not next(iter(lengths.values())):
        raise PredictError("nothing to predict: the input has no rows")
    return Table(columns, "predict input")


def from_table(table: Table, inputs: dict[str, dict], outputs: dict[str, dict] | None = None) -> Table:
    """The model's input columns (and `outputs`, for evaluation) of a table read from a file, each through its
    kind's `table_column` (image paths become absolute against the file's folder). Absent columns are named."""
    columns = {n: kind_of(sig).table_column(table.column(n, field_path=f"the model's input '{n}'"), table.root)
               for n, sig in inputs.items()}
    for name in outputs or {}:
        columns[name] = table.column(name, field_path=f"the model's output '{name}'")
    return Table(columns, table.origin, table.split, list(table.notes), table.root)


__all__ = ["from_table", "to_table"]
