"""``logprobe alerts watch``: tail the store, feed new steps to the alert engine, record alerts.

Each tick lists the files (cheap: the catalog reads only new footers), then asks DuckDB for the
rows of rule metrics past each run's cursor in the files that appeared since the last tick only:
every row lives in exactly one committed file, so new rows are in new files, and a tick costs what
was written since the last one, not what the store holds (with 32 writers flushing every second,
a query over the whole table read ~1,000 more file schemas each minute).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import duckdb

from monitor._alerts import Alert, AlertEngine
from storage import Store, Writer


class AlertWatcher:
    def __init__(self, store: Store, engine: AlertEngine, writer: Writer | None = None) -> None:
        self.store = store
        self.engine = engine
        self.writer = writer
        self._cursor: dict[str, int] = {}
        self._seen: set[str] = set()  # files already read

    def tick(self) -> list[Alert]:
        """Process every step written since the last tick; returns the alerts that changed state."""
        self.store.refresh()
        names = sorted(self.engine.metrics)
        if not names:
            return []
        files = self.store.files("metrics")
        new = [f for f in files if f not in self._seen]
        if not new:
            return []
        try:
            rows = self._rows_past_cursors(new, names)
        except duckdb.IOException:  # a compaction replaced files under the query: look again
            self.store.refresh()
            files = self.store.files("metrics")
            rows = self._rows_past_cursors([f for f in files if f not in self._seen], names)
        self._seen = set(files)  # files compacted away are forgotten, so the set stays small
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
            self._cursor[run_id] = max(step, self._cursor.get(run_id, step))
        if self.writer is not None and changed:
            self.writer.flush()
        return changed

    def _rows_past_cursors(self, paths: list[str], names: list[str]) -> list[dict]:
        if not paths:
            return []
        return self.store.sql(
            "WITH c AS (SELECT unnest(?) AS run_id, unnest(?) AS after) "
            f"SELECT m.run_id, m.step, m.name, avg(m.value) AS value FROM {self.store.source(paths)} m "
            "LEFT JOIN c USING (run_id) WHERE m.name IN (SELECT unnest(?)) "
            "AND m.step > coalesce(c.after, -9223372036854775808) "
            "GROUP BY ALL ORDER BY m.run_id, m.step",
            [list(self._cursor), list(self._cursor.values()), names],
        ).to_pylist()

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
