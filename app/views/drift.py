"""Drift and alerts: what the monitor found and what fired, newest first, each linked to its chart."""

from __future__ import annotations

import pyarrow as pa
import streamlit as st

from logprobe import storage
from logprobe.app.session import Context, chart_link, findings, literal

LINK = st.column_config.LinkColumn("chart", display_text="open chart")


def render(ctx: Context) -> None:
    st.header("Drift and alerts")
    if not ctx.selected:
        st.info("Select runs in the sidebar.")
        return
    found = sorted(
        (f for run in ctx.selected for f in findings(ctx.store, run)),
        key=lambda f: f.step_detected if f.step_detected is not None else f.step_first,
        reverse=True,
    )
    st.subheader(f"Findings ({len(found)})")
    if found:
        rows = [
            {
                "run_id": f.run_id,
                "metric": f.metric,
                "severity": f.severity,
                "detector": f.detector,
                "steps": f"{f.step_first}-{f.step_last}",
                "detected at": f.step_detected if f.step_detected is not None else f.step_first,
                "message": f.message,
                "chart": chart_link(f.run_id, f.metric, f.step_first, f.step_last),
            }
            for f in found
        ]
        st.dataframe(pa.Table.from_pylist(rows), hide_index=True, column_config={"chart": LINK})
        labels = [f"{r['run_id']} · {r['metric']} · steps {r['steps']} ({r['detector']})" for r in rows]
        pick = st.selectbox("Open a finding on its chart", range(len(rows)), format_func=labels.__getitem__)
        f = found[pick]
        if "metrics" in ctx.pages:
            pad = max(5, (f.step_last - f.step_first) // 2)
            st.page_link(
                ctx.pages["metrics"],
                label=literal(f"{f.metric} around steps {f.step_first}-{f.step_last}"),
                query_params={
                    "runs": f.run_id,
                    "metric": f.metric,
                    "x0": f.step_first - pad,
                    "x1": f.step_last + pad,
                },
            )
    else:
        st.success("No findings on the selected runs.")

    fired = storage.alerts(ctx.store, ctx.selected).to_pylist()
    st.subheader(f"Alerts ({len(fired)})")
    if fired:
        for row in fired:
            row["chart"] = chart_link(row["run_id"], row["metric"], row["step"], row["step"])
        st.dataframe(pa.Table.from_pylist(fired), hide_index=True, column_config={"chart": LINK})
    else:
        st.caption(
            "No alert has fired on the selected runs (alerts come from `logprobe alerts watch` "
            "or `collectors.init(alerts=...)`)."
        )

    st.subheader("Active rules")
    st.caption(literal(ctx.rules_source))
    st.dataframe(
        pa.Table.from_pylist(
            [
                {
                    "rule": r.name,
                    "metric": r.metric,
                    "above": r.above,
                    "below": r.below,
                    "for steps": r.for_steps,
                    "severity": r.severity,
                    "notify": ", ".join(r.notify),
                }
                for r in ctx.rules
            ]
        ),
        hide_index=True,
    )
