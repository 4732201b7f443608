"""What every page gets: the store, the runs in view, the selected runs, the alert rules.

Per browser session state lives here (DuckDB connections are not shared across threads); page
modules only lay out what ``storage`` and ``monitor`` return.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import streamlit as st

from logprobe import monitor, storage

STATUSES = ("live", "finished", "stale")
# What Streamlit's Markdown (CommonMark, GFM, math, emoji and colour directives) gives a meaning.
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()<>#+!|$~:&])")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def literal(value: object) -> str:
    """``value`` escaped to show as typed inside Streamlit Markdown (st.markdown, st.caption,
    st.info and the like, widget and link labels): metric names, flag values, paths and messages
    are user data, and ``**x**``, ``[x](javascript:...)``, ``<img ...>``, ``$x$`` or ``:red[x]`` in
    them must not format anything."""
    text = _MARKDOWN_SPECIAL.sub(r"\\\1", _CONTROL.sub(" ", str(value)))
    # A list or heading marker only counts at the start of a line.
    return re.sub(r"^(\s*)([-=])", r"\1\\\2", re.sub(r"^(\s*\d+)\.", r"\1\\.", text))


@dataclass
class Context:
    root: str
    store: storage.Store
    runs: list[dict[str, Any]]  # after the sidebar's status filter and search
    selected: list[str]  # the runs picked for comparison
    rules: list[monitor.Rule]
    rules_source: str  # where the rules came from (a file, or the shipped defaults)
    pages: dict[str, Any] = field(default_factory=dict)  # name -> st.Page, for links between pages


def store(root: str, *, confined: bool = False) -> storage.Store:
    """This session's Store, refreshed to the files on disk now."""
    key = f"store-{confined}"
    if key not in st.session_state:
        # Tabs share this process's copy of an s3:// root: one listing per second serves them all.
        st.session_state[key] = storage.Store(root, confined=confined, sync_max_age_s=1.0)
    current = st.session_state[key]
    current.refresh()
    return current


def findings(db: storage.Store, run_id: str) -> list[monitor.Finding]:
    """The monitor's findings for one run: from the ``findings`` table when a watcher or the
    collector keeps them, else from the scan kept on disk, which reads only files it has not seen.
    Nothing is kept per browser session, so a new tab or a refresh never rescans a run."""
    return monitor.run_findings(db, run_id)


# What a diagnosis reads of a run (and of its reference run): a new file in any of them can change it.
DIAGNOSIS_TABLES = ("runs", "metrics", "engines", "events", "sequences")


def diagnosis(db: storage.Store, run_id: str) -> tuple[list[monitor.Diagnosis], monitor.Evidence]:
    """The run's ranked causes (empty: healthy) and the evidence they were read from.

    Kept per process, not per browser session, under the names of the files the diagnosis reads
    (the run's and its reference run's): a refresh, a new tab or the Runs page's next rerun reuses
    it, and a run recomputes only once a file of its own (or of its reference) is written or merged.
    """
    return _diagnosed(str(db.location), run_id, _fingerprints(db, [run_id])[run_id], db)


def top_causes(db: storage.Store, run_ids: Sequence[str]) -> dict[str, monitor.Diagnosis | None]:
    """Each run's most likely cause (None when healthy): the Runs page's column, cached as
    :func:`diagnosis` is, so listing a hundred runs diagnoses only those whose files changed."""
    keys = _fingerprints(db, run_ids)
    out: dict[str, monitor.Diagnosis | None] = {}
    for run_id in run_ids:
        ranked, _ = _diagnosed(str(db.location), run_id, keys[run_id], db)
        out[run_id] = ranked[0] if ranked else None
    return out


def _fingerprints(db: storage.Store, run_ids: Sequence[str]) -> dict[str, str]:
    """Per run, a digest of the files a diagnosis of it reads now: its own partitions and its
    reference run's, in every table of :data:`DIAGNOSIS_TABLES` (one pass over the file lists)."""
    by_run: dict[str | None, list[str]] = {}
    for table in DIAGNOSIS_TABLES:
        for path in db.files(table):
            by_run.setdefault(storage.run_of_file(path), []).append(f"{table}/{path}")
    out = {}
    for run_id in run_ids:
        reference = monitor.reference_of(db, run_id)
        digest = hashlib.sha256(f"reference={reference}\n".encode())
        for run in dict.fromkeys(r for r in (run_id, reference) if r):
            for name in sorted(by_run.get(run, ())):
                digest.update(f"{name}\n".encode())
        out[run_id] = digest.hexdigest()
    return out


@st.cache_data(max_entries=1024, show_spinner=False)
def _diagnosed(
    location: str, run_id: str, fingerprint: str, _db: storage.Store
) -> tuple[list[monitor.Diagnosis], monitor.Evidence]:
    """Keyed on (location, run_id, fingerprint); ``_db`` (unhashed) only reads when the key is new."""
    evidence = monitor.load_evidence(_db, run_id)
    return monitor.diagnose_evidence(evidence), evidence


def live_series(run_ids: list[str], metric: str, x: str, max_points: int) -> storage.LiveSeries:
    """One LiveSeries per chart, kept across reruns so a refresh reads only new files."""
    key = ("live", tuple(run_ids), metric, x, max_points)
    if key not in st.session_state:
        st.session_state[key] = storage.LiveSeries(run_ids, [metric], x=x, max_points=max_points)
    return st.session_state[key]


def chart_link(run_id: str, metric: str, step_first: int | None, step_last: int | None) -> str:
    """A relative URL that opens the Metrics page on ``metric`` around these steps."""
    from urllib.parse import urlencode

    params: dict[str, Any] = {"runs": run_id, "metric": metric}
    if step_first is not None:
        last = step_first if step_last is None else step_last
        pad = max(5, (last - step_first) // 2)
        params |= {"x0": step_first - pad, "x1": last + pad}
    return "metrics?" + urlencode(params)
