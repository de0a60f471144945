"""The paper's reported numbers (``experiments/paper/reported.csv``) for overlays.

The file has one row per table row of the paper: ``table``, ``row`` (the paper's label), and,
where a grid reproduces it, ``grid`` and ``row_name`` (the grid row it corresponds to), then
``AP``, ``AP_S``, ``AP_M``, ``AP_L``, ``GFLOPs``, ``FPS`` (and optionally ``AR``). A file without
``grid``/``row_name`` (e.g. ``shared/paper/reported_numbers.csv``) is read too: its rows can
still be overlaid by table.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from runner.db import REPO_ROOT

DEFAULT_PATH = REPO_ROOT / "experiments" / "paper" / "reported.csv"
METRICS = ("AP", "AP_S", "AP_M", "AP_L", "GFLOPs", "FPS", "AR")
COLUMNS = ("table", "row", "grid", "row_name", *METRICS)


class PaperError(ValueError):
    """The reported-numbers file cannot be read; the message names the file and the problem."""


def load_reported(path: str | Path) -> pd.DataFrame:
    """The reported numbers with every column of ``COLUMNS`` (text keys, float metrics, NaN if not given).

    Raises ``FileNotFoundError`` when the file is absent and ``PaperError`` when it is malformed.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(path)
    try:
        frame = pd.read_csv(path, dtype={"table": str, "row": str, "grid": str, "row_name": str})
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise PaperError(f"{path}: not a readable CSV ({exc})") from None
    missing = [c for c in ("table", "row") if c not in frame.columns]
    if missing:
        raise PaperError(f"{path}: missing column(s) {', '.join(missing)}")
    out = pd.DataFrame({c: frame[c].fillna("").astype(str).str.strip() if c in frame.columns else ""
                        for c in ("table", "row", "grid", "row_name")})
    for metric in METRICS:
        if metric in frame.columns:
            values = pd.to_numeric(frame[metric], errors="coerce")
            bad = frame[metric].notna() & values.isna()
            if bad.any():
                raise PaperError(f"{path}: column {metric!r} has a non-number {frame.loc[bad, metric].iloc[0]!r} "
                                 f"(line {int(bad.idxmax()) + 2})")
            out[metric] = values.astype("float64")
        else:
            out[metric] = float("nan")
    return out


def tables_for_grids(reported: pd.DataFrame, grids: list[str]) -> list[str]:
    """The paper tables that have a row reproduced by one of ``grids`` (in file order)."""
    matched = reported[reported["grid"].isin(grids) & (reported["grid"] != "")]
    return list(dict.fromkeys(matched["table"]))
