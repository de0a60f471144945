"""Widgets shared by the views: select boxes whose default follows the data chosen elsewhere."""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import streamlit as st

from fastinst.grid import SpeedSetting
from runner.db import Database
from runner.results import setting_text, speed_settings


def follow_default(key: str, default: Hashable, options: list[Any], context: Hashable = None) -> None:
    """Set widget ``key`` to ``default`` whenever the default or its ``context`` (e.g. the chosen grids)
    changes, or its value is no longer an option; a choice the user made otherwise stays."""
    seen = f"{key}_default"
    if st.session_state.get(seen) != (default, context) or st.session_state.get(key) not in options:
        st.session_state[seen] = (default, context)
        st.session_state[key] = default


def speed_selector(db: Database, grids: list[str], reference: SpeedSetting, key: str) -> SpeedSetting:
    """A select box of the reference setting and every setting measured for ``grids`` (most runs first)."""
    options = list(dict.fromkeys([reference, *speed_settings(db, grids)]))
    follow_default(key, reference, options, tuple(grids))
    return st.selectbox("FPS measured on", options, key=key,
                        format_func=lambda s: setting_text(s) + (" (the grid's reference)" if s == reference else ""))
