"""Diagnosis of one run from the store: gather the evidence the cause library reads, and rank.

Reads only what the rules need: the run's ``mismatch/*`` and ``signature/*`` series (one value per
step), the prefix-cache hit counters, its engine configurations and events, the engine's own weight
versions beside the trainer's from the ``sequences`` sample, and the reference run's level.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from logprobe import storage
from logprobe.monitor._causes import Diagnosis, Evidence, diagnose_evidence
from logprobe.monitor._scan import reference_of
from logprobe.storage import Store

LEVEL = "mismatch/abs_logp_diff_mean"
_NAMES = (LEVEL, "rollout/prefix_cache_hit_tokens", "engine/prefix_cache_hits")


def load_evidence(store: Store, run_id: str, reference: str | None = None) -> Evidence:
    """The :class:`Evidence` for ``run_id``, judged against ``reference`` (default: the run's own)."""
    rows = storage.step_metrics(store, run_id, ["signature/"], _NAMES)
    columns = {
        name: (
            np.asarray(rows.column("steps")[i].values.to_numpy(zero_copy_only=False), dtype=np.int64),
            np.asarray(rows.column("values")[i].values.to_numpy(zero_copy_only=False), dtype=float),
        )
        for i, name in enumerate(rows.column("name").to_pylist())
    }
    steps = np.unique(np.concatenate([s for s, _ in columns.values()])) if columns else np.zeros(0, np.int64)
    series: dict[str, np.ndarray] = {}
    for name, (at, values) in columns.items():
        column = np.full(len(steps), np.nan)
        column[np.searchsorted(steps, at)] = values
        series[name] = column

    ref_id = reference if reference is not None else reference_of(store, run_id)
    level = median = None
    if ref_id and ref_id != run_id:
        level, median = reference_level(store, ref_id), reference_level(store, ref_id, 0.5)

    engines = storage.engines(store, [run_id]).to_pylist()
    engines.sort(key=lambda r: (r.get("step_first") is not None, r.get("step_first") or 0))
    events = [
        (e["step"], e["kind"], _payload(e["payload"]))
        for e in storage.events(store, [run_id]).to_pylist()
        if e["kind"] not in ("run_start", "run_end", "monitor")
    ]
    gaps = storage.version_gaps(store, run_id)
    gap = None
    if gaps.num_rows:
        gap = np.full(len(steps), np.nan)
        gap_steps = np.asarray(gaps.column("step").to_pylist(), dtype=np.int64)
        known = np.isin(gap_steps, steps)
        gap[np.searchsorted(steps, gap_steps[known])] = np.asarray(gaps.column("gap").to_pylist(), float)[
            known
        ]
    return Evidence(run_id, steps, series, ref_id, level, median, engines, events, gap)


def reference_level(store: Store, run_id: str, quantile: float = 0.9) -> float | None:
    """A quantile of the reference run's mean |d| (default the 90th percentile: the level a healthy
    twin reaches)."""
    return storage.metric_quantile(store, run_id, LEVEL, quantile)


def diagnose(store: Store, run_id: str, reference: str | None = None) -> list[Diagnosis]:
    """The causes of ``run_id``'s mismatch, most likely first; empty for a healthy run."""
    return diagnose_evidence(load_evidence(store, run_id, reference))


def markdown(run_id: str, ranked: Sequence[Diagnosis]) -> str:
    """A diagnosis as Markdown: one section per cause, evidence then fix."""
    if not ranked:
        return f"# {run_id}: healthy\n\nNo cause: the mismatch never rose above the reference's level.\n"
    lines = [f"# {run_id}: {ranked[0].title or ranked[0].cause}", ""]
    for d in ranked:
        since = "" if d.step_first is None else f", from step {d.step_first}"
        lines += [
            f"## {d.cause} (confidence {d.confidence:.2f}{since})",
            "",
            f"- **Evidence:** {d.evidence}",
            f"- **Fix:** {d.fix}",
            "",
        ]
    return "\n".join(lines)


def _payload(text: Any) -> dict[str, Any]:
    try:
        value = json.loads(text) if isinstance(text, str) else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
