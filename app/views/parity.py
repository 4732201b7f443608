"""Parity: a candidate run against a reference run, with a verdict and an HTML report to share."""

from __future__ import annotations

import pyarrow as pa
import streamlit as st

from logprobe import monitor
from logprobe.app.session import Context, literal


def render(ctx: Context) -> None:
    st.header("Parity")
    runs = ctx.selected
    if len(runs) < 2:
        st.info("Parity needs two selected runs: a reference and a candidate.")
        return
    default_ref = next((i for i, r in enumerate(runs) if "reference" in r), 0)
    left, right = st.columns(2)
    ref = left.selectbox("Reference run", runs, index=default_ref)
    cand = right.selectbox("Candidate run", runs, index=1 if default_ref == 0 else 0)
    if ref == cand:
        st.warning("Pick two different runs.")
        return
    report = monitor.parity(ctx.store, ref, cand)
    st.download_button("Download HTML", report.to_html(), file_name=f"parity-{cand}.html", mime="text/html")
    # Tables rather than report.to_markdown(): metric names and flag values are user data, and a
    # table shows them as typed whatever they hold.
    if report.passed:
        st.success(f"Verdict: PASS ({literal(cand)} against {literal(ref)})")
    else:
        # A warning, not st.error: a failed comparison is a finding, not a fault of the page.
        st.warning(f"Verdict: FAIL (first divergence at step {report.first_divergence})")
    st.dataframe(
        pa.Table.from_pylist(
            [
                {
                    "metric": m.metric,
                    "steps": m.steps,
                    "ref mean": m.ref_mean,
                    "run mean": m.run_mean,
                    "mean abs diff": m.mean_abs_diff,
                    "max abs diff": m.max_abs_diff,
                    "tolerance": m.tolerance,
                    "first divergence": m.first_divergence,
                    "verdict": "-" if m.passed is None else ("pass" if m.passed else "FAIL"),
                }
                for m in report.metrics
            ]
        )
        if report.metrics
        else pa.table({"metric": pa.array([], pa.string())}),
        hide_index=True,
        column_config={
            name: st.column_config.NumberColumn(name, format="%.4g")
            for name in ("ref mean", "run mean", "mean abs diff", "max abs diff", "tolerance")
        },
    )
    st.caption(
        "A metric fails when the run is worse than the reference by more than the tolerance for "
        f"{report.consecutive} consecutive steps."
    )
    st.subheader("Engine flags that differ")
    if report.flag_diff:
        st.dataframe(
            pa.Table.from_pylist(
                [{"flag": k, "ref": _text(a), "run": _text(b)} for k, a, b in report.flag_diff]
            ),
            hide_index=True,
        )
    else:
        st.success("None: both runs used the same engine settings.")


def _text(value: object) -> str:
    return "" if value is None else str(value)
