"""A run's findings as readers get them: from the store when a live monitor keeps them, else from
one scan kept on disk and resumed with only the files that appeared since.

A run with a ``monitor`` event has its findings written as they happen (``logprobe alerts watch``
or ``collectors.init(alerts=...)``), so readers only read the ``findings`` table. Any other run is
scanned once; the monitor's state goes to ``$LOGPROBE_CACHE_DIR/findings`` (else
``~/.cache/logprobe/findings``), keyed by the root and the run and listing the metric files it
consumed. Committed files are immutable and every row lives in one file, so the next call feeds
only the rows of new files; a file that vanished (compaction merged it) means a rescan. Every
process and browser session shares the one copy on disk.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from logprobe import storage
from logprobe.monitor._findings import Finding
from logprobe.monitor._online import RunMonitor
from logprobe.monitor._scan import feed, metric_rows, monitor_for
from logprobe.storage import Store, files_of_runs

log = logging.getLogger(__name__)


def findings_cache_dir(store: Store) -> Path:
    """Where scans of this store's runs are kept: one folder per root under ``storage.cache_root()``."""
    digest = hashlib.sha256(str(store.location).encode()).hexdigest()[:16]
    return storage.cache_root() / "findings" / digest


def stored_findings(store: Store, run_id: str) -> list[Finding]:
    """The newest row of each finding a live monitor wrote for ``run_id``."""
    rows = storage.findings(store, [run_id]).to_pylist()
    return sorted(
        (
            Finding(
                run_id=r["run_id"],
                metric=r["metric"],
                step_first=r["step_first"],
                step_last=r["step_last"],
                severity=r["severity"],
                detector=r["detector"],
                value=r["value"],
                message=r["message"],
                step_detected=r["step_detected"],
                state=r["state"],
            )
            for r in rows
        ),
        key=lambda f: (f.step_first, f.metric, f.detector),
    )


def run_findings(store: Store, run_id: str) -> list[Finding]:
    """The run's findings now, at the cost of what was written since the last call."""
    if run_id in storage.monitored_runs(store, [run_id]):
        return stored_findings(store, run_id)
    return KeptScan(store, run_id).update()


class KeptScan:
    """One run's scan state on disk; ``update`` feeds the rows of files it has not seen."""

    def __init__(self, store: Store, run_id: str) -> None:
        self.store = store
        self.run_id = run_id
        self.path = findings_cache_dir(store) / (hashlib.sha256(run_id.encode()).hexdigest()[:24] + ".json")
        self.rows_read = 0  # rows fed by the last update (0: nothing new)
        self.scans = 0  # full scans of this run kept in the file (kept across processes)
        self.updates = 0  # updates that read new files

    def update(self) -> list[Finding]:
        monitor, seen = self._load()
        picked: dict[str, Any] = {}

        def new_files(files: list[str]) -> list[str]:
            # Called again on a retry, over the files that exist then (a compaction may land between).
            names = {os.path.basename(p): p for p in files_of_runs(files, {self.run_id})}
            picked["names"], picked["rescan"] = set(names), monitor is None or not seen <= set(names)
            picked["paths"] = [p for n, p in names.items() if picked["rescan"] or n not in seen]
            return picked["paths"]

        current = {os.path.basename(p) for p in self.store.run_files("metrics", self.run_id)}
        self.rows_read = 0
        if monitor is not None and seen == current:
            return monitor.findings()
        table = metric_rows(self.store, self.run_id, pick=new_files)
        if picked["rescan"]:  # new, or a compaction merged files it had read
            monitor = monitor_for(self.store, self.run_id)
            self.scans += 1
        assert monitor is not None
        if picked["paths"]:
            self.rows_read = table.num_rows
            feed(monitor, table)
            self.updates += 1
            self._save(monitor, picked["names"])
        return monitor.findings()

    def _load(self) -> tuple[RunMonitor | None, set[str]]:
        try:
            saved = json.loads(self.path.read_text())
            if saved.get("root") != str(self.store.location) or saved.get("run_id") != self.run_id:
                return None, set()
            self.scans, self.updates = int(saved.get("scans", 0)), int(saved.get("updates", 0))
            return RunMonitor.from_state(saved["state"]), set(saved["files"])
        except FileNotFoundError:
            return None, set()
        except (OSError, ValueError, KeyError, TypeError) as exc:  # a damaged or older cache is rebuilt
            log.warning(
                "logprobe: rescanning %s: kept scan %s unreadable or from older detectors (%s)",
                self.run_id,
                self.path,
                exc,
            )
            return None, set()

    def _save(self, monitor: RunMonitor, files: set[str]) -> None:
        """Atomically (temp file, then rename): two dashboards saving at once leave one whole file."""
        body = {
            "root": str(self.store.location),
            "run_id": self.run_id,
            "scans": self.scans,
            "updates": self.updates,
            "files": sorted(files),
        }
        body["state"] = monitor.state()
        tmp = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".tmp-", suffix=".json")
            with os.fdopen(fd, "w") as out:
                json.dump(body, out, allow_nan=True)
            os.replace(tmp, self.path)
        except OSError as exc:  # a read-only home or a full disk: the scan is right, only not kept
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)
            log.warning("logprobe: cannot keep the scan of %s in %s: %s", self.run_id, self.path.parent, exc)
