"""Data: sources, splits, per-type features and the in-memory batch path."""

from dlforge.data.prepare import Encoded, Prepared, build_features, encode, prepare, read_table, signature
from dlforge.data.readers import load_table
from dlforge.data.table import Table

__all__ = ["Encoded", "Prepared", "Table", "build_features", "encode", "load_table", "prepare", "read_table", "signature"]
