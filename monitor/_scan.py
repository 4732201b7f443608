"""Run every applicable detector over a run's series, straight from the store."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from monitor._detectors import cusum, ewma_residuals, nonfinite, spikes, threshold
from monitor._findings import Finding
from monitor._flags import ConfigChange, config_changes
from monitor._rules import CREEPING, DEFAULT_THRESHOLDS, TRENDING, Threshold
from storage import Store


def detect(
    run_id: str,
    metric: str,
    steps: np.ndarray,
    values: np.ndarray,
    thresholds: dict[str, list[Threshold]] | None = None,
) -> list[Finding]:
    """All detectors that apply to ``metric``, newest problems last."""
    rules = DEFAULT_THRESHOLDS if thresholds is None else thresholds
    order = np.argsort(steps, kind="stable")
    steps, values = np.asarray(steps)[order], np.asarray(values, dtype=np.float64)[order]
    found = nonfinite(run_id, metric, steps, values)
    for rule in rules.get(metric, []):
        found += threshold(run_id, metric, steps, values, rule)
    if metric in CREEPING:
        found += cusum(run_id, metric, steps, values)
    if metric in TRENDING:
        found += ewma_residuals(run_id, metric, steps, values)
    elif metric.startswith(("mismatch/", "reward/", "train/", "response/")):
        found += spikes(run_id, metric, steps, values)
    return sorted(found, key=lambda f: (f.step_first, f.metric))


def detect_run(
    store: Store, run_id: str, thresholds: dict[str, list[Threshold]] | None = None
) -> list[Finding]:
    """Findings for every metric of one run (several rows at one step, e.g. ranks, are averaged)."""
    table: pa.Table = store.sql(
        "SELECT name, step, avg(value) AS value FROM metrics WHERE run_id = ? GROUP BY name, step "
        "ORDER BY name, step",
        [run_id],
    )
    names = np.asarray(table.column("name").to_pylist(), dtype=object)
    steps = table.column("step").to_numpy()
    values = table.column("value").to_numpy(zero_copy_only=False)
    found: list[Finding] = []
    for name in dict.fromkeys(names.tolist()):
        idx = names == name
        found += detect(run_id, name, steps[idx], values[idx], thresholds)
    return found


@dataclass(frozen=True)
class Attribution:
    finding: Finding
    change: ConfigChange | None  # the engine change just before the finding, if any

    @property
    def message(self) -> str:
        if self.change is None:
            return self.finding.message
        flags = ", ".join(f"{k}: {a} -> {b}" for k, a, b in self.change.diff) or "no flag differs"
        return f"{self.finding.message}; at the engine change of step {self.change.step} ({flags})"


def attribute(store: Store, run_id: str, findings: list[Finding], window: int = 5) -> list[Attribution]:
    """Pair each finding with an engine configuration change within ``window`` steps of its onset
    (either side: a detector's onset estimate can lead the true change by a step or two)."""
    changes = config_changes(store, run_id)
    out = []
    for finding in findings:
        near = sorted(
            (abs(finding.step_first - c.step), c.step, c)
            for c in changes
            if abs(finding.step_first - c.step) <= window
        )
        out.append(Attribution(finding, near[0][2] if near else None))
    return out
