"""Live metrics: every selected run overlaid per metric, refreshed from new files only."""

from __future__ import annotations

import math
from collections.abc import Mapping

import streamlit as st

from logprobe import storage
from logprobe.app import charts
from logprobe.app.session import Context, findings, literal, live_series

DEFAULT_METRICS = ("mismatch/k3", "mismatch/abs_logp_diff_mean", "reward/mean", "train/clip_frac")
MARKED_EVENTS = ("weight_update", "config_change", "stale_prefix_cache")
MAX_POINTS = 600
REFRESH_S = 3


def render(ctx: Context) -> None:
    st.header("Metrics")
    if not ctx.selected:
        st.info("Select runs in the sidebar.")
        return
    names = storage.metric_names(ctx.store, ctx.selected)
    if not names:
        st.info("The selected runs have logged no metrics yet.")
        return
    asked = st.query_params.get("metric")
    preferred = [m for m in DEFAULT_METRICS if m in names] or names[:4]
    default = list(dict.fromkeys([asked, *preferred] if asked in names else preferred))  # no repeats
    chosen = st.multiselect("Metrics", names, default=default)
    cols = st.columns([2, 2, 1, 1, 1])
    x = cols[0].radio("x axis", list(storage.X_AXES), horizontal=True)
    half_life = cols[1].slider("smoothing half-life (x units)", 0.0, 100.0, 0.0, step=0.5)
    log_y = cols[2].checkbox("log y", help="mismatch metrics span decades")
    shade = cols[3].checkbox("findings", value=True, help="Shade the monitor's findings (step axis)")
    live_default = any(r["status"] == "live" for r in ctx.runs if r["run_id"] in ctx.selected)
    live = cols[4].toggle(f"live ({REFRESH_S} s)", value=live_default)
    x_range = _x_range(st.query_params) if x == "step" else None

    @st.fragment(run_every=REFRESH_S if live else None)
    def charts_fragment() -> None:
        # Only this part reruns while live; each chart reads just the files written since last time.
        events = []
        for e in storage.events(ctx.store, ctx.selected, MARKED_EVENTS).to_pylist():
            events.append({**e, "epoch": e["ts"].timestamp() if e["ts"] else None})
        found = [f for run in ctx.selected for f in findings(ctx.store, run)] if shade else []
        last: dict[str, float] = {}  # newest x per run, from the series already in hand
        for metric in chosen:
            live = live_series(ctx.selected, metric, x, MAX_POINTS)
            live.update(ctx.store)
            series = live.table()
            for run_id, x_last in zip(
                series["run_id"].to_pylist(), series["x_last"].to_pylist(), strict=True
            ):
                last[run_id] = max(last.get(run_id, x_last), x_last)
            fig = charts.metric_figure(
                metric,
                series,
                x=x,
                half_life=half_life,
                log_y=log_y,
                findings=found,
                events=events,
                rules=ctx.rules,
                x_range=x_range if metric == asked else None,
            )
            st.plotly_chart(fig, key=f"chart-{metric}")
        # Not list_runs: it scans the whole store, and this runs every few seconds.
        st.caption(
            f"last {x}: "
            + ", ".join(f"{literal(run)} {_fmt(last.get(run), x)}" for run in ctx.selected)
            + " · ticks along the bottom: weight updates (grey), stale prefix cache (red);"
            " dashed lines: engine config changes; strips or shading: the monitor's findings"
        )

    charts_fragment()


def _fmt(value: float | None, x: str) -> str:
    return "-" if value is None else f"{value:.0f}" if x != "time" else f"{value:.1f}"


def _x_range(params: Mapping[str, str]) -> tuple[float, float] | None:
    """The step range a chart link asked for (``?x0=..&x1=..``); a hand-edited URL with anything
    but two finite numbers there is ignored, not an exception on the page."""
    try:
        lo, hi = float(params["x0"]), float(params["x1"])
    except (KeyError, ValueError):
        return None
    return (lo, hi) if math.isfinite(lo) and math.isfinite(hi) else None
