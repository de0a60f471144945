"""``runner.comparison`` for the views, cached until the database's results change
(``data.results_stamp``): resampling every run's per-image matching takes a while, and every click
reruns the script. ``ComparisonError`` is not cached."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboard import data
from fastinst.grid import SpeedSetting
from runner import comparison
from runner.db import Database

SPINNER = "Resampling the val images for 95% intervals…"


def compare_grid(db: Database, grid: str, baseline: str, setting: SpeedSetting) -> pd.DataFrame:
    """``runner.comparison.compare_grid`` of ``grid`` against ``baseline`` (AP, FPS on ``setting``)."""
    return _compare_grid(db, db.display_url, data.results_stamp(db), grid, baseline, setting)


def grid_intervals(db: Database, baselines: dict[str, str | None], metric: str,
                   setting: SpeedSetting) -> tuple[dict[str, pd.DataFrame], dict[str, str]]:
    """``data.grid_intervals``."""
    return _grid_intervals(db, db.display_url, data.results_stamp(db), baselines, metric, setting)


# ``url`` and ``stamp`` only key the caches (``_db`` is not hashed).
@st.cache_data(max_entries=32, show_spinner=SPINNER)
def _compare_grid(_db: Database, url: str, stamp: tuple[int, ...], grid: str, baseline: str,
                  setting: SpeedSetting) -> pd.DataFrame:
    return comparison.compare_grid(_db, grid, baseline=baseline, setting=setting)


@st.cache_data(max_entries=32, show_spinner=SPINNER)
def _grid_intervals(_db: Database, url: str, stamp: tuple[int, ...], baselines: dict[str, str | None], metric: str,
                    setting: SpeedSetting) -> tuple[dict[str, pd.DataFrame], dict[str, str]]:
    return data.grid_intervals(_db, baselines, metric, setting)
