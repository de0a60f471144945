"""Run view: one run's state, metrics (AP with its 95% interval over val images where the eval kept one),
every speed measurement, resolved config and its diff against the grid's base, training curves from the
per-step records, prediction images and artifacts."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from dashboard import data
from dashboard.figures import curves_chart
from fastinst.grid import GridError
from runner.db import SUCCEEDED, Database
from runner.results import METRICS, STORED, run_speed, runs_frame


def render(db: Database) -> None:
    st.header("Run details")
    runs = runs_frame(db)
    labels = {int(r.run_id): f"#{r.run_id} · {r.grid} / {r.row} · seed {r.seed} · {r.status}"
              for r in runs.itertuples()}
    ids = list(labels)
    wanted = st.query_params.get("run", "")  # a link to one run: ?view=Run&run=12
    succeeded = [i for i, status in enumerate(runs["status"]) if status == SUCCEEDED]
    index = ids.index(int(wanted)) if wanted.isdigit() and int(wanted) in labels else (succeeded or [0])[0]
    run_id = st.selectbox("Run", ids, index=index, format_func=lambda i: labels[i], key="run")  # ids: labels' keys
    st.query_params["run"] = str(run_id)
    detail = data.run_detail(db, int(run_id)) if run_id is not None else None
    if detail is None:
        st.info("Choose a run.")
        return

    c = st.columns(5)
    c[0].metric("Status", detail.status)
    c[1].metric("Attempts", f"{detail.attempts}/{detail.max_attempts}")
    c[2].metric("Worker", detail.worker or "–")
    c[3].metric("Device", detail.device or "–")
    duration = (detail.finished_at - detail.started_at).total_seconds() if detail.finished_at and detail.started_at else None
    c[4].metric("Duration", f"{duration:.0f} s" if duration is not None else "–")
    st.caption(f"Stages {detail.stages} · config hash {detail.config_hash} · git {detail.git_commit or 'unknown'} · "
               f"run dir {detail.run_dir or '–'}")
    if detail.error:
        with st.expander(f"Error: {data.error_summary(detail.error)}", expanded=detail.status == "failed"):
            st.code(detail.error, language=None)

    st.subheader("Metrics")
    if detail.metrics is None:
        st.info("No metrics yet (they are stored when the run succeeds).")
    else:
        ap = data.ap_text(detail.metrics)
        if ap:
            st.markdown(f"**{ap}**")
        shown = {k: detail.metrics[k] for k in STORED}
        st.dataframe(pd.DataFrame([shown]), hide_index=True, column_config={
            k: st.column_config.NumberColumn(METRICS[k].title, format="%.2f") for k in shown})
        st.caption("AP in percent, params in millions")
        with st.expander("Other results (extra)"):
            st.json(detail.metrics["extra"])
    _speed(db, detail.run_id)

    _config(detail)
    _curves(db, detail.run_id)
    _images(detail)
    with st.expander("Artifacts and environment"):
        st.dataframe(pd.DataFrame([{"kind": k, "path": p, "exists": Path(p).exists()} for k, p in detail.artifacts],
                                  columns=["kind", "path", "exists"]), hide_index=True)
        st.json(detail.packages)


def _speed(db: Database, run_id: int) -> None:
    st.subheader("Speed")
    rows = run_speed(db, run_id)
    if rows.empty:
        st.info("No speed measurement of this run yet (the bench stage, or `runner measure`, adds them).")
        return
    st.dataframe(rows, hide_index=True, column_config={
        "fps": st.column_config.NumberColumn("FPS (median)", format="%.2f"),
        "fps_min": st.column_config.NumberColumn("min", format="%.2f"),
        "fps_max": st.column_config.NumberColumn("max", format="%.2f"),
        "concurrent": st.column_config.NumberColumn("other jobs on the host"),
    })
    st.caption("Every measurement, newest first; tables and plots use the newest one per device/dtype/backend. "
               "FPS: median over the repeats of images / time at batch 1.")


def _config(detail: data.RunDetail) -> None:
    st.subheader("Config")
    diff_tab, overrides_tab, full_tab = st.tabs(["Diff against the grid's base", "Row overrides", "Resolved config"])
    try:
        diff = data.config_diff(data.base_config(detail.grid_spec, detail.grid_path), detail.config)
    except (GridError, OSError) as exc:
        diff_tab.warning(f"The grid's base config cannot be resolved any more ({exc}); "
                         "the row overrides are what this run changes.")
    else:
        diff_tab.dataframe(diff, hide_index=True)
    overrides_tab.json(detail.overrides)
    full_tab.json(detail.config, expanded=1)


def _curves(db: Database, run_id: int) -> None:
    st.subheader("Training curves")
    records = data.train_records(db, run_id)
    if records.empty:
        st.info("This run has no per-step training records (no train stage, or it has not logged yet).")
        return
    losses = [s for s in dict.fromkeys(records["series"]) if s != "lr"]
    c1, c2 = st.columns([4, 1])
    chosen = c1.multiselect("Series", losses, default=losses, key="run_series")
    log_y = c2.toggle("Log scale", value=False, key="run_log")
    st.altair_chart(curves_chart(records, chosen, log_y, "losses"), width="stretch", key="run_losses")
    if (records["series"] == "lr").any():
        st.altair_chart(curves_chart(records, ["lr"], False, "learning rate").properties(height=160),
                        width="stretch", key="run_lr")


def _images(detail: data.RunDetail) -> None:
    st.subheader("Predictions on val images")
    images = data.artifact_images(detail.artifacts)
    if not images:
        st.info("This run has no prediction images: none of its artifacts is an image or image folder of kind "
                f"{', '.join(data.IMAGE_KINDS)} (or its files are not reachable from this machine).")
        return
    st.image([str(p) for p in images], caption=[p.name for p in images], width=320)
