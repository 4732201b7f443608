"""Run every applicable detector over a run's series, straight from the store."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from logprobe import storage
from logprobe.monitor._findings import Finding
from logprobe.monitor._flags import ConfigChange, config_changes
from logprobe.monitor._online import DEFAULT_SETTINGS, Reference, RunMonitor, Settings
from logprobe.monitor._thresholds import Threshold
from logprobe.storage import Store, metric_rows


def detect(
    run_id: str,
    metric: str,
    steps: np.ndarray,
    values: np.ndarray,
    thresholds: dict[str, list[Threshold]] | None = None,
    *,
    reference: Reference | None = None,
    settings: Settings = DEFAULT_SETTINGS,
) -> list[Finding]:
    """All detectors that apply to ``metric`` over a whole series, by onset."""
    monitor = RunMonitor(run_id, thresholds=thresholds, reference=reference, settings=settings)
    monitor.update(metric, steps, values)
    return monitor.findings()


def feed(monitor: RunMonitor, table: pa.Table) -> list[Finding]:
    """Feed rows of many metrics: grouped by metric through dictionary codes (strided columns when
    every step has the same metrics in one order, else a radix sort of the codes); ``update``
    puts each metric's points in step order and averages rows that share a step (ranks)."""
    if table.num_rows == 0:
        return []
    encoded = pc.dictionary_encode(table.column("name")).combine_chunks()
    codes = encoded.indices.to_numpy(zero_copy_only=False)
    names = encoded.dictionary.to_pylist()
    steps = table.column("step").to_numpy()
    values = table.column("value").to_numpy(zero_copy_only=False)
    k = len(names)
    if 0 < k <= len(codes) and len(codes) % k == 0:
        # The usual layout: every step carries the same metrics in one order (how a writer
        # flushes a step), so each metric is a strided column, no sort or gather needed.
        grid = codes.reshape(-1, k)
        if np.array_equal(np.sort(grid[0]), np.arange(k)) and (grid == grid[0]).all():
            out: list[Finding] = []
            step_grid, value_grid = steps.reshape(-1, k), values.reshape(-1, k)
            for j, code in enumerate(grid[0].tolist()):
                if names[code] is not None:
                    out += monitor.update(
                        names[code],
                        np.ascontiguousarray(step_grid[:, j]),
                        np.ascontiguousarray(value_grid[:, j]),
                    )
            return out
    order = np.argsort(codes.astype(np.int32 if len(names) > 32767 else np.int16), kind="stable")
    codes = codes[order]
    cuts = np.flatnonzero(codes[1:] != codes[:-1]) + 1
    found: list[Finding] = []
    for a, b in zip(np.r_[0, cuts], np.r_[cuts, len(codes)], strict=True):
        idx = order[a:b]
        name = names[codes[a]]
        if name is not None:
            found += monitor.update(name, steps[idx], values[idx])
    return found


def load_reference(store: Store, run_id: str, settings: Settings = DEFAULT_SETTINGS) -> Reference | None:
    """The baselines of a reference run from the store; None if it has no metrics (yet)."""
    table = metric_rows(store, run_id)
    if table.num_rows == 0:
        return None
    names = np.asarray(table.column("name").to_pylist(), dtype=object)
    steps = table.column("step").to_numpy()
    values = table.column("value").to_numpy(zero_copy_only=False)
    series = {}
    for name in dict.fromkeys(names.tolist()):
        idx = np.flatnonzero(names == name)
        order = idx[np.argsort(steps[idx], kind="stable")]
        series[str(name)] = (steps[order], values[order])
    return Reference.of_series(run_id, series, settings)


def reference_of(store: Store, run_id: str) -> str | None:
    """The reference run recorded for ``run_id`` (``logprobe.init(reference=...)``), if any."""
    return storage.reference_run(store, run_id)


def monitor_for(
    store: Store,
    run_id: str,
    thresholds: dict[str, list[Threshold]] | None = None,
    reference: str | None = None,
    settings: Settings = DEFAULT_SETTINGS,
) -> RunMonitor:
    """A fresh RunMonitor for ``run_id``, judged against ``reference`` (default: the one the run
    recorded) when that run has metrics."""
    ref_id = reference if reference is not None else reference_of(store, run_id)
    ref = load_reference(store, ref_id, settings) if ref_id else None
    return RunMonitor(run_id, thresholds=thresholds, reference=ref, settings=settings)


def detect_run(
    store: Store,
    run_id: str,
    thresholds: dict[str, list[Threshold]] | None = None,
    *,
    reference: str | None = None,
    settings: Settings = DEFAULT_SETTINGS,
) -> list[Finding]:
    """Findings for every metric of one run: a full scan (the kept, incremental one is
    ``monitor.run_findings``)."""
    monitor = monitor_for(store, run_id, thresholds, reference, settings)
    feed(monitor, metric_rows(store, run_id))
    return monitor.findings()


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
