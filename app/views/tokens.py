"""Tokens: where in the distribution the log-ratio mass sits, step by step, and the worst tokens."""

from __future__ import annotations

import streamlit as st

from logprobe import storage
from logprobe.app import charts
from logprobe.app.session import Context, literal


def render(ctx: Context) -> None:
    st.header("Tokens")
    if not ctx.selected:
        st.info("Select runs in the sidebar.")
        return
    run_id = st.selectbox("Run", ctx.selected)
    matrix = storage.histogram_matrix(ctx.store, run_id)
    if matrix.num_rows:
        st.plotly_chart(charts.histogram_heatmap(matrix), key="heatmap")
    else:
        st.info(f"{literal(run_id)} logged no log-ratio histograms (Run.log_mismatch writes them).")
    steps = storage.token_steps(ctx.store, run_id)
    if not steps:
        st.info(f"{literal(run_id)} logged no per-token rows.")
        return
    choice = st.select_slider("Step", options=["all", *steps], value=steps[-1])
    worst = storage.worst_tokens(ctx.store, run_id, None if choice == "all" else int(choice), limit=100)
    st.subheader("Worst tokens by |trainer - rollout| log-ratio")
    st.dataframe(
        worst,
        hide_index=True,
        column_config={
            "token_text": st.column_config.TextColumn("token"),
            "trainer_logprob": st.column_config.NumberColumn("trainer logprob", format="%.6f"),
            "rollout_logprob": st.column_config.NumberColumn("rollout logprob", format="%.6f"),
            "log_ratio": st.column_config.NumberColumn("log ratio", format="%.3e"),
        },
    )
