"""Flags and versions: which engine flags separate a metric, the per-value spread, and flag diffs."""

from __future__ import annotations

import json

import pyarrow as pa
import streamlit as st

from logprobe import monitor, storage
from logprobe.app import charts
from logprobe.app.session import Context, literal


def render(ctx: Context) -> None:
    st.header("Flags and versions")
    names = storage.metric_names(ctx.store, ctx.selected)
    if not ctx.selected or not names:
        st.info("Select runs with metrics in the sidebar.")
        return
    metric = st.selectbox("Metric", names, index=names.index("mismatch/k3") if "mismatch/k3" in names else 0)
    effects = monitor.flag_effects(monitor.segments(ctx.store, metric, ctx.selected))
    if not effects:
        st.info("No engine flag varies across the selected runs' segments (or no engine was recorded).")
    else:
        st.dataframe(
            pa.Table.from_pylist(
                [
                    {
                        "flag": e.flag,
                        "worst value": e.high_value,
                        "effect (Cliff's delta)": round(e.effect, 3),
                        "median ratio": None if e.median_ratio is None else round(e.median_ratio, 3),
                        "p (exact Mann-Whitney)": round(e.p_value, 4),
                        "segments per value": json.dumps({k: len(v) for k, v in e.groups.items()}),
                        "confounded with": ", ".join(e.confounded_with),
                    }
                    for e in effects
                ]
            ),
            hide_index=True,
        )
        st.caption(
            "Ranked by effect size. One run per value cannot reach significance: "
            "confounded flags always moved together, so the data cannot tell them apart."
        )
        flag = st.selectbox("Spread per value of", [e.flag for e in effects])
        st.plotly_chart(charts.flag_strip(next(e for e in effects if e.flag == flag), metric), key="strip")

    st.subheader("Flag diff of two runs")
    if len(ctx.selected) < 2:
        st.info("Select two runs to diff their engine flags.")
        return
    left, right = st.columns(2)
    a = left.selectbox("Run A", ctx.selected, index=0)
    b = right.selectbox("Run B", ctx.selected, index=1)
    diff = monitor.flag_diff(ctx.store, a, b)
    if diff:
        st.dataframe(
            pa.Table.from_pylist([{"flag": k, a: va, b: vb} for k, va, vb in diff]),
            hide_index=True,
        )
    else:
        st.success(f"{literal(a)} and {literal(b)} ran with the same engine flags.")
