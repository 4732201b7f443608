"""The per-process Parquet writer.

``log_metrics`` and ``append`` only put rows into in-memory queues (a ``collections.deque`` append
is atomic under the GIL, so callers never take a lock); a background thread turns the queues into
Arrow tables every ``flush_interval`` seconds and writes each one through a hidden temp file and
``os.replace`` (on an ``s3://`` root: one whole-object PUT). A reader therefore sees a file whole or
not at all, and a crash loses at most what was queued since the last flush.

Nothing here raises into the caller after construction (unless ``strict=True``): write failures
keep the rows queued and retry them on the next flush; rows that do not fit under
``max_buffer_rows`` are counted as dropped, warned about once, and recorded as a ``dropped_rows``
event as soon as the store is writable again.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import socket
import threading
import time
import uuid
import weakref
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from logprobe.storage._layout import (
    check_name,
    check_table,
    data_file_name,
    partition_dir,
    resolve_root,
    temp_path,
)
from logprobe.storage._objectstore import ObjectRoot
from logprobe.storage._partitions import partition_name
from logprobe.storage._schema import SCHEMAS

log = logging.getLogger(__name__)

MAX_NAME_LENGTH = 1000
_LIVE_WRITERS: weakref.WeakSet[Writer] = weakref.WeakSet()


@dataclass(frozen=True)
class WriterStats:
    rows_accepted: int
    rows_written: int
    rows_dropped: int
    values_invalid: int
    rows_pending: int
    files_written: int
    write_errors: int
    last_error: str | None


def _scalar(value: Any) -> float | None:
    """A Python float for anything that is one number (numpy/torch scalars, 1-element tensors)."""
    if isinstance(value, np.complexfloating):
        return None  # float() would keep the real part with only a ComplexWarning
    if isinstance(value, bool | int | float | np.number):
        try:
            return float(value)
        except OverflowError:  # an int beyond float range
            return None
    item = getattr(value, "item", None)
    if item is not None and getattr(value, "numel", lambda: getattr(value, "size", 0))() == 1:
        try:
            return float(item())
        except (TypeError, ValueError, RuntimeError):
            return None
    return None


class Writer:
    """Buffers rows of one process and flushes them to Parquet in the background."""

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        *,
        writer_id: str | None = None,
        flush_interval: float = 1.0,
        max_buffer_rows: int = 5_000_000,
        flush_rows: int = 250_000,
        compression: str = "zstd",
        strict: bool = False,
    ) -> None:
        if not flush_interval > 0:
            raise ValueError(f"flush_interval must be > 0, got {flush_interval!r}")
        if max_buffer_rows < 1 or flush_rows < 1:
            raise ValueError(
                f"max_buffer_rows and flush_rows must be >= 1, got {max_buffer_rows}, {flush_rows}"
            )
        self.root: Path | ObjectRoot = resolve_root(root)
        host = check_name("host", _safe_host())
        self.writer_id = check_name("writer_id", writer_id or f"{host}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        self.flush_interval = float(flush_interval)
        self.max_buffer_rows = int(max_buffer_rows)
        self.flush_rows = int(flush_rows)
        self.compression = compression
        self.strict = strict

        # Queues filled by caller threads, drained by whoever holds _flush_lock.
        self._metrics: deque[tuple] = deque()
        self._rows: deque[tuple[str, str, dict[str, Any]]] = deque()
        # Arrow tables built from the queues that could not be written yet (disk full, ...).
        self._unwritten: list[tuple[str, str, pa.Table]] = []
        # Two single-writer counters: callers add to _accepted, the flusher adds to _settled.
        self._accepted = 0
        self._settled = 0
        self._written = 0
        self._dropped = 0
        self._invalid = 0
        self._files = 0
        self._errors = 0
        self._last_error: str | None = None
        self._warned: set[str] = set()
        self._drops_to_record: dict[str, int] = {}
        self._invalid_names: set[tuple[str, str]] = set()
        self._known_runs: set[str] = set()
        # The latest ``runs`` row of each run, written again if the data root is deleted under us.
        self._run_rows: dict[str, dict[str, Any]] = {}
        self._root_made = False
        self._seq = 0
        self._forked = False  # set in a forked child, which must never write the parent's rows
        self._closed = False

        self._flush_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._flush_loop, name=f"logprobe-writer-{self.writer_id}", daemon=True
        )
        self._thread.start()
        _LIVE_WRITERS.add(self)
        _warm_up_arrow()
        atexit.register(self.close)

    # ------------------------------------------------------------------ caller side (hot path)

    def log_metrics(
        self,
        run_id: str,
        step: int,
        metrics: Mapping[str, Any],
        *,
        policy_version: int | None = None,
        source: str = "trainer",
        rank: int = 0,
        worker: str | None = None,
        ts: float | None = None,
    ) -> None:
        """Queue one step of scalar metrics (one row per name in the long ``metrics`` table)."""
        if run_id not in self._known_runs:
            self._known_runs.add(check_name("run_id", run_id))
        clean = dict(metrics)
        MAX = MAX_NAME_LENGTH  # noqa: N806 (a local: this loop runs for every metric logged)
        for name, value in clean.items():
            kind = type(value)
            if (kind is not float and kind is not int) or type(name) is not str or not 0 < len(name) <= MAX:
                clean = self._clean_metrics(run_id, clean)
                break
        n = len(clean)
        if not self._admit(run_id, n):
            return
        self._metrics.append(
            (run_id, step, policy_version, time.time() if ts is None else ts, source, rank, worker, clean)
        )
        self._accepted += n
        if self._accepted - self._settled >= self.flush_rows:
            self._wake.set()

    def append(self, table: str, run_id: str, row: Mapping[str, Any]) -> None:
        """Queue one row for any table; ``row`` holds that table's columns (missing ones are NULL)."""
        check_table(table)
        if run_id not in self._known_runs:
            self._known_runs.add(check_name("run_id", run_id))
        if not self._admit(run_id, 1):
            return
        if table == "runs":
            self._run_rows[run_id] = dict(row)
        self._rows.append((table, run_id, dict(row)))
        self._accepted += 1

    def _admit(self, run_id: str, n: int) -> bool:
        if self._closed or self._forked:
            reason = "writer is closed" if self._closed else "writer was inherited by a forked child"
            self._drop(run_id, n, reason)
            return False
        if self._accepted - self._settled + n > self.max_buffer_rows:
            self._drop(run_id, n, f"buffer full ({self.max_buffer_rows} rows); {self._last_error or ''}")
            return False
        return True

    def _clean_metrics(self, run_id: str, metrics: dict[Any, Any]) -> dict[str, float]:
        clean: dict[str, float] = {}
        for name, value in metrics.items():
            if type(name) is not str or not name or len(name) > MAX_NAME_LENGTH:
                self._invalid_value(
                    run_id,
                    repr(name)[:200],
                    f"metric name must be a non-empty str of at most {MAX_NAME_LENGTH} characters",
                )
                continue
            number = _scalar(value)
            if number is None:
                self._invalid_value(run_id, name, f"value {type(value).__name__} is not one number")
                continue
            clean[name] = number
        return clean

    def _invalid_value(self, run_id: str, name: str, reason: str) -> None:
        self._invalid += 1
        if self.strict:
            raise TypeError(f"metric {name}: {reason}")
        if (run_id, name) not in self._invalid_names:
            self._invalid_names.add((run_id, name))
            log.warning("logprobe: skipping metric %s in run %s: %s", name, run_id, reason)
            self._rows.append(
                (
                    "events",
                    run_id,
                    {"kind": "invalid_metric", "payload": json.dumps({"name": name, "reason": reason})},
                )
            )
            self._accepted += 1

    def _drop(self, run_id: str, n: int, reason: str) -> None:
        self._dropped += n
        self._drops_to_record[run_id] = self._drops_to_record.get(run_id, 0) + n
        self._warn_once("drop:" + reason.split(";")[0], "logprobe: dropping rows: %s", reason)

    # ------------------------------------------------------------------ flushing

    def flush(self) -> None:
        """Write everything queued so far; returns when it is on disk (or has failed and is kept)."""
        if self._forked:  # checked before the lock, which the parent's thread may have held at fork
            return
        with self._flush_lock:
            self._collect()
            self._write_unwritten()

    def _flush_loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.flush_interval)
            self._wake.clear()
            try:
                self.flush()
            except Exception as exc:  # only strict mode lets flush() raise; the thread must live on
                self._errors += 1
                self._last_error = f"{type(exc).__name__}: {exc}"

    def _collect(self) -> None:
        """Drain the queues into Arrow tables grouped by (table, run)."""
        batch = [self._metrics.popleft() for _ in range(len(self._metrics))]
        for key, entries in _group(batch, lambda e: (e[0], e[4], e[5], e[6])).items():
            try:
                table = _metrics_table(entries)
            except (OverflowError, ValueError, TypeError, UnicodeError, pa.ArrowException):
                table = _metrics_table([self._writable(e) for e in entries])
            self._unwritten.append(("metrics", key[0], table))
        # After the metrics: _writable may have queued invalid_metric events, written in this flush.
        rows = [self._rows.popleft() for _ in range(len(self._rows))]
        if self._drops_to_record and self._last_error is None:
            # Recorded once the store takes writes again, as one event with the total so far.
            drops, self._drops_to_record = self._drops_to_record, {}
            for run_id, count in drops.items():
                payload = json.dumps({"rows": count, "writer_id": self.writer_id})
                rows.append(("events", run_id, {"kind": "dropped_rows", "payload": payload}))
                self._accepted += 1
        for (table, run_id), group in _group(rows, lambda r: (r[0], r[1])).items():
            tbl = self._rows_table(table, run_id, [r[2] for r in group])
            if tbl is not None:
                self._unwritten.append((table, run_id, tbl))

    def _writable(self, entry: tuple) -> tuple:
        """``entry`` without the values that cannot be stored (ints beyond float range, names that are
        not valid UTF-8), each counted and recorded like any invalid value, so the rest of its batch
        is written. Only runs when building the batch failed, so the hot path never pays for it."""
        clean: dict[str, float] = {}
        for name, value in entry[7].items():
            try:
                name.encode("utf-8")
                clean[name] = float(value)
            except UnicodeEncodeError:
                self._invalid_value(entry[0], repr(name)[:200], "metric name is not valid UTF-8")
            except (OverflowError, TypeError, ValueError):
                self._invalid_value(entry[0], name, f"value {value!r:.50} does not fit a float64")
        self._settled += len(entry[7]) - len(clean)
        return (*entry[:7], clean)

    def _rows_table(self, table: str, run_id: str, rows: list[dict[str, Any]]) -> pa.Table | None:
        schema = SCHEMAS[table]
        now = time.time()
        for row in rows:
            if "ts" in schema.names and row.get("ts") is None:
                row["ts"] = now
            if isinstance(row.get("ts"), float | int):
                row["ts"] = int(row["ts"] * 1_000_000)
            if "created_at" in schema.names and isinstance(row.get("created_at"), float | int):
                row["created_at"] = int(row["created_at"] * 1_000_000)
        try:
            return pa.Table.from_pylist(rows, schema=schema)
        except (pa.ArrowException, TypeError, ValueError, OverflowError) as exc:
            if self.strict:
                raise
            good = []
            for row in rows:
                try:
                    pa.Table.from_pylist([row], schema=schema)
                    good.append(row)
                except (pa.ArrowException, TypeError, ValueError, OverflowError):
                    self._dropped += 1
                    self._settled += 1
            self._warn_once(
                f"bad-row:{table}",
                "logprobe: dropped %s row(s) of table %s in run %s: %s",
                len(rows) - len(good),
                table,
                run_id,
                exc,
            )
            return pa.Table.from_pylist(good, schema=schema) if good else None

    def _write_unwritten(self) -> None:
        if len(self._unwritten) > 1:
            self._unwritten = _coalesce(self._unwritten)
        still: list[tuple[str, str, pa.Table]] = []
        for i, (table, run_id, tbl) in enumerate(self._unwritten):
            try:
                self._write_file(table, run_id, tbl)
            except Exception as exc:
                self._note_error(exc)
                still = self._unwritten[i:]
                break
            self._written += tbl.num_rows
            self._settled += tbl.num_rows
            self._files += 1
        else:
            if self._last_error is not None:
                log.warning("logprobe: writing to %s resumed", self.root)
                self._last_error = None
                # warn again if it breaks again
                self._warned = {k for k in self._warned if not k.startswith(("error:", "drop:"))}
        self._unwritten = still

    def _write_file(self, table: str, run_id: str, tbl: pa.Table) -> None:
        name = data_file_name(self.writer_id, self._seq)
        self._seq += 1
        if isinstance(self.root, ObjectRoot):
            self.root.put_table(self.root.key(table, partition_name(run_id), name), tbl, self.compression)
            return
        if self._root_made and not self.root.is_dir():
            self._root_lost()
        directory = partition_dir(self.root, table, run_id)
        directory.mkdir(parents=True, exist_ok=True)
        self._root_made = True
        final = directory / name
        tmp = temp_path(final)
        try:
            pq.write_table(tbl, tmp, compression=self.compression)
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def _root_lost(self) -> None:
        """The data root vanished (deleted mid-run): recreate it, and say so, since what was in it is gone.

        The runs' ``runs`` rows are queued again so the dashboard still knows their names and config.
        """
        log.warning(
            "logprobe: data root %s was deleted while run(s) %s were writing; recreating it "
            "(files written before are gone, new rows go on being written)",
            self.root,
            ", ".join(sorted(self._known_runs)),
        )
        self._root_made = False
        payload = json.dumps({"root": str(self.root)})
        for run_id, row in self._run_rows.items():
            self._rows.append(("runs", run_id, dict(row)))
            self._rows.append(("events", run_id, {"kind": "root_recreated", "payload": payload}))
            self._accepted += 2

    def _note_error(self, exc: BaseException) -> None:
        self._errors += 1
        self._last_error = f"{type(exc).__name__}: {exc}"
        if self.strict:
            raise exc
        self._warn_once(
            f"error:{type(exc).__name__}",
            "logprobe: cannot write to %s (%s); rows stay buffered and are retried",
            self.root,
            self._last_error,
        )

    def _warn_once(self, key: str, msg: str, *args: Any) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(msg, *args)

    # ------------------------------------------------------------------ lifecycle

    def stats(self) -> WriterStats:
        return WriterStats(
            rows_accepted=self._accepted,
            rows_written=self._written,
            rows_dropped=self._dropped,
            values_invalid=self._invalid,
            rows_pending=self._accepted - self._settled,
            files_written=self._files,
            write_errors=self._errors,
            last_error=self._last_error,
        )

    def close(self) -> WriterStats:
        """Stop the thread and write what is left; rows that still cannot be written are reported."""
        if self._closed or self._forked:
            return self.stats()
        self._closed = True
        self._stop.set()
        self._wake.set()
        self._thread.join()
        atexit.unregister(self.close)
        try:
            self.flush()
        finally:
            lost = self._accepted - self._settled
            if lost:
                self._dropped += lost
                self._settled += lost
                self._unwritten = []
                log.warning(
                    "logprobe: %d row(s) could not be written to %s before close: %s",
                    lost,
                    self.root,
                    self._last_error,
                )
        return self.stats()

    def __enter__(self) -> Writer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _coalesce(pending: list[tuple[str, str, pa.Table]]) -> list[tuple[str, str, pa.Table]]:
    """One table per (table, run) out of what piled up while the disk was unwritable.

    Without this, an hour-long outage would come back as one small file per flush interval each.
    """
    grouped = _group(pending, lambda entry: (entry[0], entry[1]))
    return [
        (table, run_id, pa.concat_tables([e[2] for e in entries], promote_options="default"))
        for (table, run_id), entries in grouped.items()
    ]


def _group(items: list, key) -> dict:
    groups: dict = {}
    for item in items:
        groups.setdefault(key(item), []).append(item)
    return groups


def _metrics_table(entries: list[tuple]) -> pa.Table:
    """Long-format rows from queued (run, step, pv, ts, source, rank, worker, dict) entries."""
    lengths = np.fromiter((len(e[7]) for e in entries), dtype=np.int64, count=len(entries))
    names = [name for e in entries for name in e[7]]
    values = np.fromiter((v for e in entries for v in e[7].values()), dtype=np.float64, count=len(names))
    steps = np.repeat(np.fromiter((e[1] for e in entries), dtype=np.int64, count=len(entries)), lengths)
    versions = [e[2] for e in entries]
    if all(v is None for v in versions):
        version_col = pa.nulls(len(names), pa.int64())
    else:
        version_col = pa.array(np.repeat(np.array(versions, dtype=object), lengths), type=pa.int64())
    ts_us = np.repeat(
        (np.fromiter((e[3] for e in entries), dtype=np.float64, count=len(entries)) * 1e6).astype(np.int64),
        lengths,
    )
    _, _, _, _, source, rank, worker, _ = entries[0]
    n = len(names)
    schema = SCHEMAS["metrics"]
    return pa.Table.from_arrays(
        [
            pa.array(steps),
            version_col,
            pa.array(ts_us, type=pa.int64()).cast(schema.field("ts").type),
            pa.array([source] * n, type=pa.string()) if n else pa.array([], pa.string()),
            pa.array(np.full(n, rank, dtype=np.int32)),
            pa.nulls(n, pa.string()) if worker is None else pa.array([worker] * n, pa.string()),
            pa.array(names, type=pa.string()),
            pa.array(values),
        ],
        schema=schema,
    )


_WARM = False


def _warm_up_arrow() -> None:
    """Build one tiny table of each kind now, once per process.

    pyarrow imports optional modules (pandas, when installed) on first use. If that first use is
    the atexit flush, the import fails ("can't register atexit after shutdown") and the rows would
    be lost; doing it here, in the caller's thread at start-up, keeps the final flush safe.
    """
    global _WARM
    if _WARM:
        return
    _metrics_table([("warm-up", 0, 1, 0.0, "trainer", 0, None, {"x": 0.0})])
    pa.Table.from_pylist([{"kind": "warm-up"}], schema=SCHEMAS["events"])
    _WARM = True


def _safe_host() -> str:
    host = "".join(c if c.isalnum() or c in "._-" else "-" for c in socket.gethostname()) or "host"
    return host.lstrip(".-_")[:60] or "host"


def _after_fork_in_child() -> None:
    # A forked child inherits the parent's queues but not its thread; it must never write them.
    for writer in list(_LIVE_WRITERS):
        writer._forked = True
        writer._metrics.clear()
        writer._rows.clear()
        writer._unwritten = []


os.register_at_fork(after_in_child=_after_fork_in_child)
