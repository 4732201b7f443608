"""The Streamlit dashboard: ``logprobe ui`` runs ``streamlit run app/dashboard.py -- --root DIR``.

Pages lay out what ``storage`` and ``monitor`` return; no statistic is computed here.
"""

from __future__ import annotations

import argparse
import json
import sys

import plotly.graph_objects as go
import pyarrow as pa
import streamlit as st

import monitor
import storage

DEFAULT_METRICS = ("mismatch/k3", "mismatch/abs_logp_diff_mean", "reward/mean", "train/clip_frac")
HEALTH = {None: "ok", "warn": "warn", "bad": "bad", "error": "bad"}


def _root() -> str:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", default=None)
    args, _ = parser.parse_known_args(sys.argv[1:])
    return str(storage.resolve_root(args.root))


def _store(root: str, confined: bool = False) -> storage.Store:
    # One DuckDB connection per browser session (connections are not shared across threads).
    key = f"store-{confined}"
    if key not in st.session_state:
        st.session_state[key] = storage.Store(root, confined=confined)
    store = st.session_state[key]
    store.refresh()
    return store


def runs_page(store: storage.Store, runs: list[dict]) -> None:
    rows = []
    for run in runs:
        findings = [
            f for f in monitor.detect_run(store, run["run_id"]) if f.detector in ("threshold", "nonfinite")
        ]
        worst = max((f.severity for f in findings), key=monitor.SEVERITIES.index, default=None)
        rows.append(
            {
                "run_id": run["run_id"],
                "name": run["name"],
                "status": run["status"],
                "health": HEALTH[worst],
                "why": findings[0].message if findings else "",
                "last_step": run["last_step"],
                "age_s": None if run["age_s"] is None else round(run["age_s"], 1),
                "points": run["points"],
            }
        )
    engines = storage.engines(store).to_pylist()
    flags = {}
    for e in engines:
        flags[e["run_id"]] = (
            f"{e['engine']} {e['vllm_version'] or ''} {e['logprobs_mode']} "
            f"cache={e['enable_prefix_caching']} head={e['lm_head_dtype']}"
        )
    for row in rows:
        row["engine"] = flags.get(row["run_id"], "")
    st.dataframe(pa.Table.from_pylist(rows) if rows else None, width="stretch", hide_index=True)
    if bad_files := store.bad_files:
        st.warning("Skipped unreadable files: " + ", ".join(str(p) for p in bad_files))


def metrics_page(store: storage.Store, selected: list[str]) -> None:
    names = storage.metric_names(store, selected)
    chosen = st.multiselect("Metrics", names, default=[m for m in DEFAULT_METRICS if m in names])
    x = st.radio("x axis", list(storage.X_AXES), horizontal=True)
    log_y = st.checkbox("log y (mismatch metrics span decades)", value=False)
    events = store.sql(
        "SELECT run_id, step, kind FROM events WHERE kind IN ('config_change', 'stale_prefix_cache') "
        "AND run_id IN (SELECT unnest(?))",
        [selected],
    ).to_pylist()
    for metric in chosen:
        series = storage.metric_series(store, selected, [metric], x=x, max_points=500).to_pylist()
        fig = go.Figure()
        for run_id in selected:
            points = [p for p in series if p["run_id"] == run_id]
            if not points:
                continue
            xs = [p["x"] for p in points]
            fig.add_trace(
                go.Scatter(
                    x=xs + xs[::-1],
                    y=[p["max"] for p in points] + [p["min"] for p in points][::-1],
                    fill="toself",
                    opacity=0.15,
                    line={"width": 0},
                    showlegend=False,
                    hoverinfo="skip",
                    name=f"{run_id} min/max",
                )
            )
            fig.add_trace(go.Scatter(x=xs, y=[p["last"] for p in points], mode="lines", name=run_id))
        if x == "step":
            for event in events:
                if event["kind"] == "config_change" and event["step"] is not None:
                    fig.add_vline(
                        x=event["step"],
                        line_dash="dash",
                        annotation_text=f"config change ({event['run_id']})",
                    )
        fig.update_layout(
            title=metric,
            height=320,
            margin={"t": 40, "b": 20},
            xaxis_title=x,
            yaxis_type="log" if log_y else "linear",
        )
        st.plotly_chart(fig, width="stretch")


def parity_page(store: storage.Store, runs: list[str]) -> None:
    if len(runs) < 2:
        st.info("Parity needs two runs.")
        return
    default_ref = next((i for i, r in enumerate(runs) if "reference" in r), 0)
    ref = st.selectbox("Reference run", runs, index=default_ref)
    cand = st.selectbox("Candidate run", runs, index=1 if default_ref == 0 else 0)
    report = monitor.parity(store, ref, cand)
    st.markdown(report.to_markdown())
    st.download_button("Download HTML", report.to_html(), file_name=f"parity-{cand}.html", mime="text/html")


def flags_page(store: storage.Store, selected: list[str]) -> None:
    metric = st.selectbox(
        "Metric",
        storage.metric_names(store, selected) or ["mismatch/k3"],
        index=0
        if "mismatch/k3" not in storage.metric_names(store, selected)
        else storage.metric_names(store, selected).index("mismatch/k3"),
    )
    effects = monitor.flag_effects(monitor.segments(store, metric, selected))
    st.dataframe(
        pa.Table.from_pylist(
            [
                {
                    "flag": e.flag,
                    "worst value": e.high_value,
                    "effect (Cliff's delta)": round(e.effect, 3),
                    "p (exact Mann-Whitney)": round(e.p_value, 4),
                    "segments": json.dumps({k: len(v) for k, v in e.groups.items()}),
                    "confounded with": ", ".join(e.confounded_with),
                }
                for e in effects
            ]
        )
        if effects
        else None,
        width="stretch",
        hide_index=True,
    )


def sql_page(root: str) -> None:
    st.caption(
        "One read-only SELECT over runs, engines, metrics, events, histograms, tokens, alerts, bad_files."
    )
    query = st.text_area(
        "SQL", "SELECT run_id, avg(value) AS k3 FROM metrics WHERE name = 'mismatch/k3' GROUP BY ALL"
    )
    if st.button("Run query"):
        try:
            st.dataframe(_store(root, confined=True).read_only_query(query), width="stretch")
        except Exception as exc:  # the console shows the error, it never takes the page down
            st.error(str(exc))


def main() -> None:
    st.set_page_config(page_title="logprobe", layout="wide")
    root = _root()
    store = _store(root)
    runs = storage.list_runs(store).to_pylist()
    st.sidebar.title("logprobe")
    st.sidebar.caption(root)
    run_ids = [r["run_id"] for r in runs]
    selected = st.sidebar.multiselect("Runs", run_ids, default=run_ids[:8])
    if not runs:
        st.info(f"No runs under {root} yet. Start one with collectors.init(root=...) or `logprobe demo`.")
        return
    tabs = st.tabs(["Runs", "Metrics", "Parity", "Flags", "SQL"])
    with tabs[0]:
        runs_page(store, runs)
    with tabs[1]:
        # While a run is live, only this part reruns every few seconds (the rest stays put).
        live = st.toggle("Live refresh (5 s)", value=any(r["status"] == "live" for r in runs))

        @st.fragment(run_every=5 if live else None)
        def live_metrics() -> None:
            metrics_page(_store(root), selected)

        live_metrics()
    with tabs[2]:
        parity_page(store, selected)
    with tabs[3]:
        flags_page(store, selected)
    with tabs[4]:
        sql_page(root)


main()
