"""Parity: a candidate run against a reference run, with a verdict and an HTML report to share."""

from __future__ import annotations

import streamlit as st

import monitor
from app.session import Context


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
    st.markdown(report.to_markdown())
