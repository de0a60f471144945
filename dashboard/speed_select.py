"""The device/dtype/backend selector of the table and trade-off views (default: the grids' reference)."""

from __future__ import annotations

import streamlit as st

from fastinst.grid import SpeedSetting
from runner.db import Database
from runner.results import setting_text, speed_settings


def speed_selector(db: Database, grids: list[str], reference: SpeedSetting, key: str) -> SpeedSetting:
    """A select box of the reference setting and every setting measured for ``grids`` (most runs first);
    it returns to the reference whenever the reference changes (another grid chosen)."""
    options = list(dict.fromkeys([reference, *speed_settings(db, grids)]))
    seen = f"{key}_reference"
    if st.session_state.get(seen) != reference or st.session_state.get(key) not in options:
        st.session_state[seen] = reference
        st.session_state[key] = reference
    return st.selectbox("FPS measured on", options, key=key,
                        format_func=lambda s: setting_text(s) + (" (the grid's reference)" if s == reference else ""))
