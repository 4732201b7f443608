"""SQL: a read-only DuckDB console over the views, confined to the data root."""

from __future__ import annotations

import streamlit as st

from logprobe.app.session import Context, literal, store

EXAMPLES = {
    "Mean k3 per run": (
        "SELECT run_id, avg(value) AS k3, max(value) AS k3_max FROM metrics\n"
        "WHERE name = 'mismatch/k3' GROUP BY run_id ORDER BY k3 DESC"
    ),
    "First step each run crossed k3 > 1e-3": (
        "SELECT run_id, min(step) AS first_bad_step FROM metrics\n"
        "WHERE name = 'mismatch/k3' AND value > 1e-3 GROUP BY run_id ORDER BY first_bad_step"
    ),
    "Engine versions and flags per run": (
        "SELECT run_id, step_first, engine, vllm_version, logprobs_mode, enable_prefix_caching,\n"
        "       async_scheduling, lm_head_dtype FROM engines ORDER BY run_id, step_first"
    ),
    "Weight updates and config changes": (
        "SELECT run_id, step, kind, payload FROM events\n"
        "WHERE kind IN ('weight_update', 'config_change', 'stale_prefix_cache') ORDER BY run_id, step"
    ),
    "Worst tokens of all runs": (
        "SELECT run_id, step, token_text, trainer_logprob, rollout_logprob, log_ratio FROM tokens\n"
        "ORDER BY abs(log_ratio) DESC LIMIT 20"
    ),
    "Alerts that fired": "SELECT * FROM alerts WHERE state = 'firing' ORDER BY ts DESC",
    "Files skipped as unreadable": "SELECT * FROM bad_files",
}


# A console query holds the session's DuckDB connection, which every page of the tab needs.
QUERY_TIMEOUT_S = 60.0


def render(ctx: Context) -> None:
    st.header("SQL")
    st.caption(
        "One read-only statement over runs, engines, metrics, events, histograms, tokens, alerts and "
        "bad_files, stopped after 60 s. Files outside the data root, extensions and ATTACH are refused."
    )
    example = st.selectbox("Saved queries", list(EXAMPLES))
    query = st.text_area("SQL", EXAMPLES[example], height=140, key=f"sql-{example}")
    if st.button("Run query"):
        try:
            result = store(ctx.root, confined=True).read_only_query(query, timeout_s=QUERY_TIMEOUT_S)
        except Exception as exc:  # the console shows the error; it never takes the page down
            st.error(literal(exc))
            return
        st.dataframe(result)
        # pandas (a Streamlit dependency) writes list columns such as runs.tags, which Arrow's CSV cannot.
        csv = result.to_pandas().to_csv(index=False)
        st.download_button("Download CSV", csv, file_name="query.csv", mime="text/csv")
