"""Recipe section `data`: where rows come from and how they are split."""

from __future__ import annotations

from typing import Annotated, Callable, Literal, Union  # noqa: F401

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator  # noqa: F401

from dlforge.recipe._base import Strict, _field  # noqa: F401


class LeaveLastOut(Strict):
    user: str = _field(..., "The user column.", min_length=1)
    time: str = _field(..., "The timestamp column (numbers, or dates pandas parses); ties keep file order.",
                       min_length=1)


class Join(Strict):
    source: str = _field(..., "A table of side features (path or builtin:NAME/file), one row per key.", min_length=1)
    key: str = _field(..., "The key column, in both tables (e.g. item_id).", min_length=1)


class SplitConfig(Strict):
    val: float = _field(0.1, "Fraction of the training rows held out for validation.", ge=0.0, lt=0.9)
    test: Union[Literal["auto", "official"], Annotated[float, Field(ge=0.0, lt=0.9)]] = _field(
        "auto",
        "Test fraction, or 'official' to use the source's own test split. 'auto': official "
        "when the source has one, else 0.2.",
    )
    seed: int = _field(0, "Seed of the split; the same seed gives the same rows.", ge=0, le=2**63 - 1)
    stratify: bool = _field(True, "Keep class proportions equal across splits (category/binary target; always false "
                                  "for other targets, where it has no meaning).")
    group: str | None = _field(
        None, "A column whose values keep their rows together: all rows of a group (a speaker, a patient, a "
        "recording) land in one split, so val/test measure unseen groups. Fractions then count groups, "
        "stratified by each group's most common class.", min_length=1)
    leave_last_out: LeaveLastOut | None = _field(
        None, "Per-user split by time (recommendation): each user's last interaction is test, the one before it "
        "val, the rest train. Replaces the fractions; a source's own split column wins over it.")


class DataConfig(Strict):
    source: str = _field(
        ...,
        "A path (.csv, .csv.gz, .parquet, .npz) or 'builtin:NAME' (digits, mnist, fashion_mnist, "
        "adult, german_credit, compas, lending_club). Relative paths are tried from the current "
        "directory, then from the recipe's directory.",
        min_length=1,
    )
    test_source: str | None = _field(
        None, "A separate file of labelled rows to test on (same columns as `source`): all of `source` then trains "
        "(less the validation share), and data.split.test must stay 'auto'. CLI: `--test FILE`.", min_length=1)
    format: Literal["auto", "csv", "parquet", "npz"] = _field("auto", "File format; 'auto' reads the extension.")
    na_values: list[str] = _field(
        [], "Strings that mean 'missing' in a CSV (and in Parquet text columns), besides empty cells, e.g. ['?', "
        "'n/a']. By default only empty cells are missing: 'NA', 'None', 'null' are values, as written.")
    keep_default_na: bool = _field(
        False, "Also treat pandas' default markers as missing: '', '#N/A', '#N/A N/A', '#NA', '-1.#IND', '-1.#QNAN', "
        "'-NaN', '-nan', '1.#IND', '1.#QNAN', '<NA>', 'N/A', 'NA', 'NULL', 'NaN', 'None', 'n/a', 'nan', 'null'.")
    split: SplitConfig = _field(SplitConfig(), "How rows are split into train/val/test.")
    join: list[Join] = _field(
        [], "Side-feature tables joined to each row by a key (left join; a key missing from the side table gives "
        "missing values, counted), e.g. item genres and user age for a recommendation recipe.")
    max_rows: int | None = _field(
        None, "Keep a seeded random subset of this many rows (quick experiments); null keeps all.", ge=1
    )
    in_memory: Union[Literal["auto"], bool] = _field(
        "auto",
        "Image files: decode them all into memory (true), stream them with DataLoader workers and an on-disk "
        "uint8 cache (false), or decide from memory_budget_mb ('auto').",
    )
    memory_budget_mb: int = _field(
        2048, "'auto' streams image files when their decoded float32 tensors would exceed this many MB.", ge=1
    )
    workers: int = _field(2, "DataLoader worker processes of the streaming path (0 decodes in the main process).",
                          ge=0, le=64)
    cache_dir: str | None = _field(
        None, "Where the streaming path caches decoded images (uint8 .npy); null: a folder under the system temp dir."
    )

