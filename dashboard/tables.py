"""Filtering and sorting of ``runner.export.grid_table`` frames (pure functions, no Streamlit)."""

from __future__ import annotations

import pandas as pd

from runner.export import TABLE_COLUMNS

METRIC_NAMES = tuple(c for c, _attr, _digits in TABLE_COLUMNS)


def key_columns(table: pd.DataFrame) -> list[str]:
    """The columns that identify a row (``row`` and the axis keys): neither metrics, stds nor ``seeds``."""
    return [c for c in table.columns if c not in METRIC_NAMES and not c.endswith("_std") and c != "seeds"]


def filter_table(table: pd.DataFrame, allowed: dict[str, list[str]], min_seeds: int = 0) -> pd.DataFrame:
    """The rows whose key values (as text) are in ``allowed[key]`` and that have at least ``min_seeds`` seeds."""
    keep = table["seeds"] >= min_seeds
    for key, values in allowed.items():
        keep &= table[key].map(str).isin(values)
    return table[keep].reset_index(drop=True)


def sort_table(table: pd.DataFrame, by: str | None, ascending: bool = True) -> pd.DataFrame:
    """Sorted by one column (missing values last), or as given when ``by`` is None."""
    if by is None:
        return table
    keys = table[by] if pd.api.types.is_numeric_dtype(table[by]) else table[by].map(str)
    order = keys.sort_values(ascending=ascending, na_position="last", kind="stable").index
    return table.loc[order].reset_index(drop=True)
