"""Filtering, sorting and verdict marks of ``runner.results.grid_table`` frames (pure functions, no
Streamlit); ``runner.export.with_verdicts`` adds the comparison with a baseline row."""

from __future__ import annotations

import math

import pandas as pd

from fastinst.engine.verdicts import UNDECIDED
from runner.export import key_columns

# Streamlit Markdown for the verdict cells of the shown table (the downloads keep the plain words).
VERDICT_MARKS = {"better": ":green[better]", "worse": ":red[worse]", UNDECIDED: ":orange-background[? undecided]"}
UNDECIDED_ROW = ":orange-background[{} ?]"


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


def mark_verdicts(table: pd.DataFrame) -> pd.DataFrame:
    """A ``with_verdicts`` table with its verdict cells coloured for Streamlit's Markdown (``VERDICT_MARKS``)
    and the first key cell of an undecided row marked the same way (the verdict column may be off screen);
    a table without verdicts as it is."""
    if "verdict" not in table.columns:
        return table
    first = key_columns(table)[0]
    undecided = table["verdict"] == UNDECIDED
    return table.assign(**{"verdict": table["verdict"].map(lambda v: VERDICT_MARKS.get(v, v)),
                           first: table[first].map(str).where(~undecided, table[first].map(UNDECIDED_ROW.format))})


def verdict_legend(table: pd.DataFrame) -> str:
    """What the verdict columns of a ``with_verdicts`` table mean, with the interval width of each row whose
    difference from the baseline is undecided."""
    metric, base = table.attrs["metric"], table.attrs["baseline"]
    keys = key_columns(table)
    widths = [f"{rec['row'] if 'row' in keys else ', '.join(f'{k}={rec[k]}' for k in keys)}: "
              + ("no interval (1 run)" if math.isnan(rec["delta_width"]) else f"width {rec['delta_width']:.1f} points")
              for rec in table[table["verdict"] == UNDECIDED].to_dict("records")]
    return (f"Compared with {base}: 95% intervals over seeds and {table.attrs['resamples']} paired val-image "
            f"resamples. **? undecided**: the interval of Δ{metric} holds 0, so the difference may be anything in it "
            f"(w: its width, in {metric} points)" + (f" — {'; '.join(widths)}" if widths else "")
            + f" · better / worse: the interval excludes 0 · P(better): the chance that a run of the row beats a "
            f"run of {base} · FPS ratio: row / {base} on {table.attrs['speed_setting']}; speed: its verdict")
