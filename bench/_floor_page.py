"""The floor of the Runs page benchmark: a Streamlit page that shows the same run ids in one table
and does nothing else (no store, no monitor, no sidebar filters), started with the dashboard's own
server flags. What it takes to open is what Streamlit and Chromium take to open any page on this
machine, so the Runs page's own cost reads as a ratio to it.

``streamlit run bench/_floor_page.py -- RUNS`` shows ``ui-run-00`` .. ``ui-run-{RUNS-1}``."""

from __future__ import annotations

import sys

import pyarrow as pa
import streamlit as st

runs = int(sys.argv[1]) if len(sys.argv) > 1 else 10
st.set_page_config(page_title="floor", layout="wide")
st.sidebar.title("floor")
st.header("Runs")
st.dataframe(pa.Table.from_pylist([{"run_id": f"ui-run-{i:02d}"} for i in range(runs)]), hide_index=True)
