"""The fastinst-lab dashboard: ``streamlit run dashboard/app.py -- [--db URL] [--paper CSV]``
(or ``runner dashboard``).

The database URL comes from ``--db``, else ``$FASTINST_DB``, else ``sqlite:///<repo>/results.db``.
The dashboard only reads: short transactions, no locks held, safe next to running workers.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import streamlit as st
from sqlalchemy.exc import SQLAlchemyError

from dashboard import data, view_queue, view_run, view_table, view_tradeoff
from dashboard.paper import DEFAULT_PATH
from runner.db import Database, resolve_url, safe_url

VIEWS = ("Trade-off", "Table", "Run", "Queue")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="dashboard/app.py", description="fastinst-lab dashboard")
    parser.add_argument("--db", help="database URL (default: $FASTINST_DB, then sqlite:///<repo>/results.db)")
    parser.add_argument("--paper", type=Path, default=DEFAULT_PATH,
                        help=f"the paper's reported numbers (default: {DEFAULT_PATH})")
    return parser.parse_args(argv)


@st.cache_resource(show_spinner=False)
def open_database(url: str) -> Database:
    """One engine per URL for the server's lifetime (connections are pooled, sessions are not kept)."""
    return Database(url)


def main() -> None:
    st.set_page_config(page_title="fastinst-lab", layout="wide")
    try:
        args = parse_args(sys.argv[1:])
    except SystemExit:
        st.error(f"Bad dashboard arguments {sys.argv[1:]}; expected `-- [--db URL] [--paper CSV]`.")
        st.stop()
    url = resolve_url(args.db)
    st.sidebar.title("fastinst-lab")
    st.sidebar.caption(f"Database: `{safe_url(url)}`")
    view = st.sidebar.radio("View", VIEWS, key="view", bind="query-params")
    db = open_database(url)
    try:
        problem = data.database_problem(db)
        if problem is not None:
            st.info(problem)
            return
        if view == "Trade-off":
            view_tradeoff.render(db, args.paper)
        elif view == "Table":
            view_table.render(db, args.paper)
        elif view == "Run":
            view_run.render(db)
        else:
            view_queue.render(db)
    except SQLAlchemyError as exc:
        st.error(f"Cannot read `{safe_url(url)}`: {type(exc).__name__}: {getattr(exc, 'orig', None) or exc}")


main()
