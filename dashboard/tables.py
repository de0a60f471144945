"""Filtering and sorting of ``runner.results.grid_table`` frames (pure functions, no Streamlit)."""

from __future__ import annotations

import pandas as pd


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
