"""``logprobe alerts watch``: tail the store, feed new steps to the alert engine and to each run's
calibrated detectors, record alerts and findings as they happen.

Each tick lists the files (cheap: the catalog reads only new footers), then asks DuckDB for the
rows of rule metrics past each run's cursor in the files that appeared since the last tick only:
every row lives in exactly one committed file, so new rows are in new files, and a tick costs what
was written since the last one, not what the store holds (with 32 writers flushing every second,
a query over the whole table read ~1,000 more file schemas each minute).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import numpy as np
import pyarrow as pa

from logprobe import storage
from logprobe.monitor._alerts import Alert, AlertEngine
from logprobe.monitor._causes import Diagnosis
from logprobe.monitor._diagnosis import diagnose
from logprobe.monitor._online import RunMonitor
from logprobe.monitor._scan import feed, monitor_for
from logprobe.storage import Store, Writer


class AlertWatcher:
    def __init__(self, store: Store, engine: AlertEngine, writer: Writer | None = None) -> None:
        self.store = store
        self.engine = engine
        self.writer = writer
        self._cursor: dict[str, int] = {}
        self._seen: set[str] = set()  # files already read
        self.monitors: dict[str, RunMonitor] = {}  # the detectors of each run seen
        if engine.explain is None:  # an alert that fires names its run's likely cause
            engine.explain = self._explain

    def _explain(self, run_id: str) -> Diagnosis | None:
        ranked = diagnose(self.store, run_id)
        return ranked[0] if ranked else None

    def tick(self) -> list[Alert]:
        """Process every step written since the last tick; returns the alerts that changed state."""
        self.store.refresh()
        if all(f in self._seen for f in self.store.files("metrics")):
            return []
        listed: list[str] = []

        def new_files(files: list[str]) -> list[str]:
            # Called again on a retry, over the files that exist then (a compaction may land between).
            listed[:] = files
            return [f for f in files if f not in self._seen]

        table = storage.rows_past_cursors(self.store, new_files, self._cursor)
        self._seen = set(listed)  # files compacted away are forgotten, so the set stays small
        if table.num_rows == 0:
            return []
        recorded = self._detect(table)
        names = self.engine.metrics
        rows = [r for r in table.to_pylist() if r["name"] in names] if names else []
        rows.sort(key=lambda r: (r["run_id"], r["step"]))
        by_step: dict[tuple[str, int], dict[str, float]] = {}
        for row in rows:
            by_step.setdefault((row["run_id"], row["step"]), {})[row["name"]] = row["value"]
        changed: list[Alert] = []
        for (run_id, step), metrics in by_step.items():
            alerts = self.engine.observe(run_id, step, metrics)
            if self.writer is not None:
                for alert in alerts:
                    self.writer.append("alerts", run_id, {**alert.row(), "source": "watcher"})
            changed += alerts
        if self.writer is not None and (changed or recorded):
            self.writer.flush()
        return changed

    def _detect(self, table: pa.Table) -> bool:
        """Feed each run's new rows to its detectors and record what changed; a run seen for the
        first time gets a ``monitor`` event, so readers take its findings from the store. Returns
        whether anything was recorded."""
        recorded = False
        run_ids = np.asarray(table.column("run_id").to_pylist(), dtype=object)
        steps = table.column("step").to_numpy()
        for run_id in dict.fromkeys(run_ids.tolist()):
            idx = np.flatnonzero(run_ids == run_id)
            self._cursor[run_id] = max(int(steps[idx].max()), self._cursor.get(run_id, -(2**63)))
            mon = self.monitors.get(run_id)
            if mon is None:
                mon = self.monitors[run_id] = monitor_for(self.store, run_id)
                if self.writer is not None:
                    recorded = True
                    ref = mon.reference.run_id if mon.reference is not None else None
                    self.writer.append(
                        "events",
                        run_id,
                        {
                            "kind": "monitor",
                            "ts": time.time(),
                            "source": "watcher",
                            "payload": json.dumps({"by": "watcher", "reference": ref}),
                        },
                    )
            changed = feed(mon, table.take(idx))
            if self.writer is not None and changed:
                recorded = True
                now = time.time()
                for finding in changed:
                    self.writer.append("findings", run_id, {**finding.row(), "ts": now, "source": "watcher"})
        return recorded

    def run(
        self,
        interval_s: float = 0.5,
        until: Callable[[], bool] | None = None,
        on_alert: Callable[[Alert], None] | None = None,
    ) -> None:
        while until is None or not until():
            for alert in self.tick():
                if on_alert is not None:
                    on_alert(alert)
            time.sleep(interval_s)
