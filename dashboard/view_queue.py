"""Queue view: runs by state, running jobs with progress and worker/device, failures with their error
text; refreshes itself (a Streamlit fragment re-run every few seconds)."""

from __future__ import annotations

import streamlit as st

from dashboard import data
from runner.db import STATUSES, Database, utcnow
from runner.export import status_frame

REFRESH_CHOICES = (2, 5, 10, 30, 60)


def render(db: Database) -> None:
    st.header("Queue")
    c1, c2 = st.columns([1, 3])
    auto = c1.toggle("Auto-refresh", value=True, key="queue_auto")
    every = c2.select_slider("Every (s)", REFRESH_CHOICES, value=5, key="queue_every", disabled=not auto)
    st.fragment(_body, run_every=every if auto else None)(db)


def _body(db: Database) -> None:
    counts = data.status_counts(db)
    for column, status in zip(st.columns(len(STATUSES)), STATUSES):
        column.metric(status, counts[status])

    st.subheader("By grid")
    st.dataframe(status_frame(db), hide_index=True,
                 column_config={"done_%": st.column_config.ProgressColumn("done", min_value=0, max_value=100,
                                                                           format="%.0f%%")})

    st.subheader("Running")
    running = data.running_jobs(db)
    if running.empty:
        st.caption("Nothing is running.")
    else:
        st.dataframe(running, hide_index=True, column_config={
            "progress": st.column_config.ProgressColumn("train progress", min_value=0.0, max_value=1.0,
                                                        format="percent"),
            "running_s": st.column_config.NumberColumn("running (s)", format="%.0f"),
            "heartbeat_s": st.column_config.NumberColumn("last heartbeat (s ago)", format="%.0f"),
        })

    st.subheader("Failures")
    problems = data.problem_runs(db)
    if problems.empty:
        st.caption("No failed runs.")
    for run in problems.itertuples():
        title = (f"#{run.run_id} {run.grid} / {run.row} · seed {run.seed} · {run.status} · attempts {run.attempts}"
                 f" — {data.error_summary(run.error)}")
        with st.expander(title):
            st.code(run.error, language=None)
    st.caption(f"Updated {utcnow():%Y-%m-%d %H:%M:%S} UTC")
