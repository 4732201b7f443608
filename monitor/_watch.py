"""``logprobe alerts watch``: tail the store, feed new steps to the alert engine, record alerts.

Each tick lists the files (cheap: the catalog reads only new footers), then asks DuckDB for the
rows of rule metrics past each run's cursor, so nothing is re-read from the start.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from monitor._alerts import Alert, AlertEngine
from storage import Store, Writer


class AlertWatcher:
    def __init__(self, store: Store, engine: AlertEngine, writer: Writer | None = None) -> None:
        self.store = store
        self.engine = engine
        self.writer = writer
        self._cursor: dict[str, int] = {}

    def tick(self) -> list[Alert]:
        """Process every step written since the last tick; returns the alerts that changed state."""
        self.store.refresh()
        names = sorted(self.engine.metrics)
        if not names:
            return []
        rows = self.store.sql(
            "WITH c AS (SELECT unnest(?) AS run_id, unnest(?) AS after) "
            "SELECT m.run_id, m.step, m.name, avg(m.value) AS value FROM metrics m "
            "LEFT JOIN c USING (run_id) WHERE m.name IN (SELECT unnest(?)) "
            "AND m.step > coalesce(c.after, -9223372036854775808) "
            "GROUP BY ALL ORDER BY m.run_id, m.step",
            [list(self._cursor), list(self._cursor.values()), names],
        ).to_pylist()
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
