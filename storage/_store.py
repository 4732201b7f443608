"""DuckDB over the Parquet files, queried in place.

Each table is a view over an explicit list of the catalog's good files (not a glob), so a corrupt
file or a compaction's leftovers can be kept out. ``refresh()`` rebuilds only the views whose files
changed; a query refreshes and retries when a file vanished under it (a compaction removed it),
which is what makes compaction safe for live readers. A query over chosen files rather than a view
(``sql_over_files``: one run's, or only the new ones) takes a rule that picks them, not a list, so
the retry picks again from the files that exist then.

One DuckDB connection serves a Store, and it runs one call at a time (DuckDB refuses a second:
"connection is busy"), so calls from several threads take turns on the Store's lock. A dashboard
session needs that: Streamlit starts a rerun's thread while the previous run may still be inside
a query.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from logprobe.storage._catalog import Catalog, Snapshot
from logprobe.storage._layout import resolve_root
from logprobe.storage._mirror import Mirror
from logprobe.storage._objectstore import ObjectRoot
from logprobe.storage._partitions import files_of_runs, run_of_file
from logprobe.storage._resources import default_memory_limit
from logprobe.storage._schema import TABLES, duckdb_columns

log = logging.getLogger(__name__)

INTERNAL_SCHEMA = "_logprobe"
MAX_ATTEMPTS = 3  # of a query whose files moved under it (see Store._with_retry)
# The head of an EXPLAIN statement (after any leading comments): what follows is what it explains.
_EXPLAIN_HEAD = re.compile(
    r"\s*(?:(?:--[^\n]*(?:\n|$)|/\*.*?\*/)\s*)*EXPLAIN\b(?:\s*\([^)]*\)|\s+ANALY[SZ]E\b)?", re.I | re.S
)


class QueryError(ValueError):
    """A query that logprobe refuses to run (for example more than one statement, or a write)."""


class Store:
    """A DuckDB connection with one view per table over the files under ``root``."""

    def __init__(
        self,
        root: str | os.PathLike[str] | ObjectRoot | None = None,
        *,
        confined: bool = False,
        sync_max_age_s: float = 0.0,
        memory_limit: str | None = None,
    ) -> None:
        """``sync_max_age_s``: on an object-store root, a refresh within this many seconds of the
        last sync of this process's copy (by any Store) reuses it; the dashboard's sessions pass
        their polling cadence, so many open tabs cost one bucket listing per interval.

        ``memory_limit`` (DuckDB's setting, e.g. ``"2GB"``) caps a confined Store's queries; by
        default a quarter of the machine's memory, at most 4 GiB, so a console query that builds a
        huge result fails with DuckDB's out-of-memory error instead of starving the trainer that
        shares the node (confined Stores cannot spill to disk)."""
        # ``location`` is the root as configured; ``root`` is the directory DuckDB reads, which for an
        # object-store root is the local copy kept by a Mirror (see storage/_mirror.py).
        self.location: Path | ObjectRoot = resolve_root(root)
        self.mirror = Mirror.shared(self.location) if isinstance(self.location, ObjectRoot) else None
        self.sync_max_age_s = sync_max_age_s
        self.root: Path = self.mirror.dir if self.mirror is not None else self.location
        self.con = duckdb.connect()
        self._lock = threading.RLock()  # one call at a time on the connection (module docstring)
        self.bad_files: dict[Path, str] = {}
        self._catalog = Catalog(self.root)
        self._view_files: dict[str, list[str] | None] = {}
        self._verified: set[str] = set()  # files read in full without error (see _set_aside_damaged)
        self._snapshot = None
        self._schema_of: dict[str, str] = {}  # path -> the catalog's schema key, for source()
        self.con.execute(f"CREATE SCHEMA {INTERNAL_SCHEMA}")
        for table in TABLES:
            self.con.execute(f"CREATE TABLE {INTERNAL_SCHEMA}.empty_{table} ({duckdb_columns(table)})")
        self.con.execute(f"CREATE TABLE {INTERNAL_SCHEMA}.bad_files (path VARCHAR, error VARCHAR)")
        self.con.execute(f"CREATE VIEW bad_files AS SELECT * FROM {INTERNAL_SCHEMA}.bad_files")
        self.refresh()  # a copy's first sync lists every partition: all are new to it
        if confined:
            self._confine(memory_limit or default_memory_limit())

    def _confine(self, memory_limit: str) -> None:
        # Order matters: without the allow-list, turning external access off also breaks the views.
        # DuckDB also allow-lists its temp directory (<cwd>/.tmp): no spilling, so no second door.
        root = str(self.root).rstrip("/") + "/"
        self.con.execute("SET temp_directory = ''")
        self.con.execute("SET memory_limit = ?", [memory_limit])
        self.con.execute("SET allowed_directories = [?]", [root])
        for setting in (
            "autoinstall_known_extensions",
            "autoload_known_extensions",
            "allow_community_extensions",
            "enable_external_access",
        ):
            self.con.execute(f"SET {setting} = false")
        self.con.execute("SET lock_configuration = true")

    def refresh(self, *, full: bool = False, max_age_s: float | None = None) -> bool:
        """Point the views at the files on disk now; True if any view changed.

        On an object-store root this first syncs the local copy; ``full`` lists every partition
        instead of only the live ones and a few quiet ones (storage/_mirror.py).
        """
        with self._lock:
            return self._refresh(full=full, max_age_s=max_age_s)

    def _refresh(self, *, full: bool, max_age_s: float | None) -> bool:
        if self.mirror is not None:
            age = self.sync_max_age_s if max_age_s is None else max_age_s
            self.mirror.sync(full=full, max_age_s=age)
        changed = False
        for tries_left in range(MAX_ATTEMPTS - 1, -1, -1):
            snap = self._catalog.scan()
            self._snapshot = snap
            self._schema_of = {str(f.path): f.schema_key for infos in snap.files.values() for f in infos}
            try:
                changed |= self._point_views(snap)
                break
            except duckdb.IOException:
                # DuckDB looks for the files when it binds the view: a compaction that deleted
                # some between the scan and here fails it. Scan again.
                if not tries_left:
                    raise
        if snap.bad_files != self.bad_files:
            for path, reason in snap.bad_files.items():
                if path not in self.bad_files:
                    log.warning("logprobe: skipping %s: %s", path, reason)
            self.bad_files = dict(snap.bad_files)
            self.con.execute(f"DELETE FROM {INTERNAL_SCHEMA}.bad_files")
            if self.bad_files:
                self.con.executemany(
                    f"INSERT INTO {INTERNAL_SCHEMA}.bad_files VALUES (?, ?)",
                    [(str(p), r) for p, r in sorted(self.bad_files.items())],
                )
        return changed

    def _point_views(self, snap: Snapshot) -> bool:
        """Re-point each view whose files changed at ``snap``'s files; True if any did."""
        changed = False
        for table in TABLES:
            paths = snap.paths(table)
            if self._view_files.get(table) == paths:
                continue
            empty = f"{INTERNAL_SCHEMA}.empty_{table}"
            if paths:
                body = f"SELECT * FROM {self.source(paths)} UNION ALL BY NAME SELECT * FROM {empty}"
            else:
                body = f"SELECT * FROM {empty}"
            self.con.execute(f"CREATE OR REPLACE VIEW {table} AS {body}")
            self._view_files[table] = paths
            changed = True
        return changed

    def files(self, table: str) -> list[str]:
        """The files the ``table`` view reads now (as of the last ``refresh()``)."""
        return list(self._view_files.get(table) or [])

    def column_range(self, table: str, run_id: str, column: str) -> tuple[float, float] | None:
        """(min, max) of ``column`` over one run's files, from footer statistics (no scan); None when
        a file lacks them. ``ts`` comes back as epoch seconds."""
        infos = [
            f
            for f in (self._snapshot.files.get(table, []) if self._snapshot else [])
            if run_of_file(f.path) == run_id
        ]
        if not infos or any(column not in f.ranges for f in infos):
            return None
        return min(f.ranges[column][0] for f in infos), max(f.ranges[column][1] for f in infos)

    def run_summary(self, table: str) -> pa.Table:
        """Per run of ``table`` (a table with ``step`` and ``ts``): rows, last step and last ``ts``.

        Read from the footers the catalog already holds, so the run list costs what the file count
        costs, not the row count (a scan of every metric row took 1.2 s at 200M points,
        bench/scale.py); only files whose footers lack statistics are scanned.
        """
        infos = self._snapshot.files.get(table, []) if self._snapshot else []
        known = [f for f in infos if "step" in f.ranges and "ts" in f.ranges]
        unknown = {str(f.path) for f in infos if not ("step" in f.ranges and "ts" in f.ranges)}
        per_file = pa.table(
            {
                "run_id": pa.array([run_of_file(f.path) for f in known], pa.string()),
                "rows": pa.array([f.num_rows for f in known], pa.int64()),
                "last_step": pa.array([int(f.ranges["step"][1]) for f in known], pa.int64()),
                # epoch seconds as a double hold microseconds exactly enough to round back to them
                "last_ts": pa.array([round(f.ranges["ts"][1] * 1e6) for f in known], pa.int64()).cast(
                    pa.timestamp("us", tz="UTC")
                ),
            }
        )
        if unknown:
            scanned = self.sql_over_files(
                table,
                lambda files: [f for f in files if f in unknown],
                "SELECT run_id, count(*)::BIGINT AS rows, max(step)::BIGINT AS last_step, "
                "max(ts) AS last_ts FROM {source} GROUP BY run_id",
            )
            per_file = pa.concat_tables([per_file, scanned.cast(per_file.schema)])
        agg = per_file.group_by("run_id").aggregate(
            [("rows", "sum"), ("last_step", "max"), ("last_ts", "max")]
        )
        return pa.table(
            {
                "run_id": agg["run_id"],
                "rows": agg["rows_sum"],
                "last_step": agg["last_step_max"],
                "last_ts": agg["last_ts_max"],
            }
        )

    def source(self, paths: list[str]) -> str:
        """A relation over exactly these files, their columns matched by name.

        Files with the same columns and types (as the catalog read them) are one ``read_parquet``
        without ``union_by_name``: DuckDB then reads the schema once and prunes other runs' files by
        their ``run_id=`` folder before opening them; with it, every query reads every file's
        schema (one-run query over 2,000 files: 220 ms against 74 ms). Groups of different schemas
        (older and newer writers) are joined by name.
        """
        groups: dict[str, list[str]] = {}
        for path in paths:
            groups.setdefault(self._schema_of.get(path, ""), []).append(path)
        parts = [_read_parquet(group, by_name=not key) for key, group in groups.items()]
        if len(parts) == 1:
            return parts[0]
        return "(" + " UNION ALL BY NAME ".join(f"SELECT * FROM {part}" for part in parts) + ")"

    def run_files(self, table: str, run_id: str) -> list[str]:
        """The files of one run that the ``table`` view reads now."""
        return files_of_runs(self.files(table), {run_id})

    def sql_over_run(self, table: str, run_id: str, query: str, params: list[Any] | None = None) -> pa.Table:
        """Run ``query`` with ``{source}`` standing for one run's files of ``table``.

        The table views union every file by name, and DuckDB reads each file's schema for that on
        every query, even when partition pruning then skips the file: with 300 files, a one-run
        query over the view took 130 ms, over the run's own files 5.5 ms (bench/scale.py).
        """
        return self.sql_over_files(table, lambda files: files_of_runs(files, {run_id}), query, params)

    def sql_over_files(
        self,
        table: str,
        pick: Callable[[list[str]], Iterable[str]],
        query: str,
        params: list[Any] | None = None,
    ) -> pa.Table:
        """Run ``query`` with ``{source}`` standing for the files of ``table`` that ``pick`` chooses
        from the view's current list (an empty relation with the table's columns if none).

        A compaction that replaces files between the pick and the query fails the query; the retry
        refreshes and calls ``pick`` again on the files that exist then, so a reader that wants only
        new files, or one run's, never asks DuckDB for a file that is gone. ``pick`` may record what
        it chose: its last call is the one whose result is returned.
        """

        def attempt() -> pa.Table:
            paths = list(pick(self.files(table)))
            empty = f"{INTERNAL_SCHEMA}.empty_{table}"
            source = (
                f"(SELECT * FROM {self.source(paths)} UNION ALL BY NAME SELECT * FROM {empty})"
                if paths
                else empty
            )
            return self.con.sql(query.replace("{source}", source), params=params).to_arrow_table()

        with self._lock:
            return self._with_retry(attempt, (table,))

    def sql(
        self,
        query: str,
        params: list[Any] | dict[str, Any] | None = None,
        *,
        tables: Mapping[str, pa.Table] | None = None,
    ) -> pa.Table:
        """Run ``query`` and return the result as a pyarrow Table; ``tables`` are Arrow tables the
        query may read under these names (registered for this query only)."""
        run = lambda: self.con.sql(query, params=params).to_arrow_table()  # noqa: E731
        with self._lock:
            for name, table in (tables or {}).items():
                self.con.register(name, table)
            try:
                return self._with_retry(run, _tables_in(query))
            finally:
                for name in tables or {}:
                    self.con.unregister(name)

    def _with_retry(self, attempt: Callable[[], pa.Table], tables: tuple[str, ...]) -> pa.Table:
        """Run ``attempt``; run it again while files moved under it or a damaged file was set aside.

        A compaction may replace files mid-query (an IOException: refresh and retry); a compaction
        loop beside a live run can do that again during the retry, so up to ``MAX_ATTEMPTS`` tries,
        each after a refresh that found the files changed. A file whose footer is fine but whose
        data pages are damaged fails the query with a bare ``duckdb.Error`` that names no file
        ("TProtocolException: Invalid data"): each file of the tables involved is then read in full
        once, the damaged ones join ``bad_files``, and the query runs without them.
        """
        for tries_left in range(MAX_ATTEMPTS - 1, -1, -1):
            try:
                return attempt()
            except duckdb.Error as exc:
                if not tries_left:
                    raise
                if isinstance(exc, duckdb.IOException):
                    moved = self.refresh(max_age_s=0.0)  # a file vanished: look now
                    if not moved and not self._set_aside_damaged(tables):
                        raise
                elif type(exc) is duckdb.Error or isinstance(exc, duckdb.InvalidInputException):
                    if not self._set_aside_damaged(tables):
                        raise
                else:
                    raise
        raise AssertionError("unreachable: the last try returns or raises")

    def _set_aside_damaged(self, tables: tuple[str, ...]) -> bool:
        """Read every not-yet-verified file of ``tables`` in full; True if any was damaged."""
        damaged = False
        for table in tables:
            for path in self.files(table):
                if path in self._verified:
                    continue
                try:
                    self.con.sql(f"SELECT * FROM {self.source([path])}").to_arrow_table()
                except duckdb.Error as exc:
                    self._catalog.set_bad(Path(path), f"damaged data in the file: {exc}")
                    damaged = True
                else:
                    self._verified.add(path)
        if damaged:
            self.refresh()
        return damaged

    def read_only_query(self, query: str, *, timeout_s: float | None = None) -> pa.Table:
        """Run one read-only statement (the SQL console's contract): a SELECT, or an EXPLAIN of one,
        inside a read-only transaction, interrupted after ``timeout_s`` seconds if given."""
        try:
            statements = duckdb.extract_statements(query)
        except duckdb.Error as exc:
            raise QueryError(f"cannot parse query: {exc}") from exc
        if len(statements) != 1:
            raise QueryError(f"expected exactly one SQL statement, got {len(statements)}")
        kind = statements[0].type
        if kind == duckdb.StatementType.EXPLAIN:
            # EXPLAIN ANALYZE runs what it explains (a COPY into the root, a DROP VIEW): one SELECT only.
            head = _EXPLAIN_HEAD.match(statements[0].query)
            try:
                inner = duckdb.extract_statements(statements[0].query[head.end() :]) if head else []
            except duckdb.Error:
                inner = []
            if len(inner) != 1 or inner[0].type != duckdb.StatementType.SELECT:
                raise QueryError("EXPLAIN is allowed only of one SELECT statement")
        elif kind != duckdb.StatementType.SELECT:
            raise QueryError(f"only read-only SELECT queries are allowed, got a {kind.name} statement")
        if timeout_s is not None and not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s!r}")
        with self._lock:
            return self._with_retry(lambda: self._read_only(query, timeout_s), _tables_in(query))

    def _read_only(self, query: str, timeout_s: float | None) -> pa.Table:
        # A SELECT can still write through a CTE (WITH d AS (DELETE ... RETURNING *) SELECT ...).
        self.con.execute("BEGIN TRANSACTION READ ONLY")
        timer = threading.Timer(timeout_s, self.con.interrupt) if timeout_s else None
        try:
            if timer is not None:
                timer.start()
            return self.con.sql(query).to_arrow_table()
        except duckdb.TransactionException as exc:
            raise QueryError(f"only read-only queries are allowed: {exc}") from exc
        except duckdb.InterruptException as exc:
            raise QueryError(f"query stopped after the {timeout_s:g} s time limit") from exc
        finally:
            if timer is not None:
                timer.cancel()
                timer.join()  # a late interrupt must not land on the ROLLBACK or the next query
            self.con.execute("ROLLBACK")

    def close(self) -> None:
        with self._lock:
            self.con.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _read_parquet(paths: list[str], *, by_name: bool) -> str:
    listing = ", ".join("'" + p.replace("'", "''") + "'" for p in paths)
    return (
        f"read_parquet([{listing}], hive_partitioning = true, union_by_name = {str(by_name).lower()}, "
        "hive_types = {'run_id': VARCHAR})"
    )


def _tables_in(query: str) -> tuple[str, ...]:
    """The tables a query names (all of them if it names none): where to look for damaged files."""
    return tuple(t for t in TABLES if re.search(rf"\b{t}\b", query)) or TABLES


def connect(root: str | os.PathLike[str] | ObjectRoot | None = None) -> duckdb.DuckDBPyConnection:
    """A plain DuckDB connection with one view per table, plus a ``bad_files`` view of what was skipped.

    The views list the files present now; use :class:`Store` (``refresh()``) to follow a live run.
    """
    return Store(root).con
