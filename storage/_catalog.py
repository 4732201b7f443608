"""Which Parquet files make up each table right now.

A file enters the catalog only if its footer reads: a truncated or foreign file is listed in
``bad_files`` with the reason and left out, so one damaged file never takes the store down. Footers
are cached by (path, size, mtime) since committed files never change, which keeps a live refresh to
one directory listing plus the footers of new files. The cache is shared by every catalog over the
same root in this process: the dashboard opens a Store per browser session, and a new session (a
new tab, a reload) then reads no footer that an earlier one has read (170 ms of a Runs page over
10 runs of 100,000 steps).

A footer must also pass DuckDB's own footer reader and match the table's column types: pyarrow
accepts some damaged footers that DuckDB refuses (which would fail every view over the table) or
that abort the process when their row-group statistics are read (so ranges are read through DuckDB),
and a file whose ``step`` is strings would turn the whole column into VARCHAR for every run.

Compaction writes a merged file whose footer names the files it replaces (``logprobe.supersedes``);
the catalog hides those, so a reader never counts a row twice, even if compaction died before it
could delete the originals.
"""

from __future__ import annotations

import json
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from logprobe.storage._layout import SUFFIX, TMP_PREFIX
from logprobe.storage._partitions import partitions, run_of_file
from logprobe.storage._schema import SCHEMAS, TABLES

SUPERSEDES_KEY = b"logprobe.supersedes"


@dataclass(frozen=True)
class FileInfo:
    path: Path
    size: int
    mtime_ns: int
    num_rows: int
    supersedes: tuple[str, ...]
    # min and max of the x-axis columns (step, policy_version, ts as epoch seconds) from the footer's
    # row-group statistics: a chart's x range without scanning the data.
    ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    # The file's columns and their types, in order: files that share it can be read as one
    # ``read_parquet`` without DuckDB's per-file schema reconciliation (Store.source).
    schema_key: str = ""


@dataclass
class Snapshot:
    """The live files per table, plus the files that were skipped and why."""

    files: dict[str, list[FileInfo]] = field(default_factory=dict)
    bad_files: dict[Path, str] = field(default_factory=dict)

    def paths(self, table: str) -> list[str]:
        return [str(f.path) for f in self.files.get(table, [])]


Footers = dict[Path, tuple[int, int, "FileInfo | str"]]  # path -> (size, mtime_ns, info or why bad)
SHARED_ROOTS = 8  # the roots whose footers stay cached, the most recently opened
_shared: OrderedDict[str, Footers] = OrderedDict()
_shared_lock = threading.Lock()


def _footers_of(real_root: str) -> Footers:
    """The footer cache of one root, shared by its catalogs; the least recent root's is dropped
    past :data:`SHARED_ROOTS` (a test suite opens thousands of roots in one process)."""
    with _shared_lock:
        footers = _shared.pop(real_root, None)
        _shared[real_root] = footers = {} if footers is None else footers
        while len(_shared) > SHARED_ROOTS:
            _shared.popitem(last=False)
        return footers


class Catalog:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._real_root = os.path.realpath(root)
        self._footers = _footers_of(self._real_root)
        self._con: duckdb.DuckDBPyConnection | None = None  # for footers, opened on first use

    def scan(self, tables: tuple[str, ...] = TABLES, run_ids: set[str] | None = None) -> Snapshot:
        snap = Snapshot()
        seen: set[Path] = set()
        for table in tables:
            infos: list[FileInfo] = []
            table_dir = self.root / table
            for partition in partitions(table_dir, run_ids):
                infos.extend(self._partition_files(partition, snap, seen))
            snap.files[table] = infos
        # Forget footers of files that are gone (compacted away or deleted). Not merely unseen: a
        # catalog sharing the cache may have read a file that appeared after this listing.
        for path in list(self._footers):
            if path in seen or path.parent.parent.name not in tables:
                continue
            if (run_ids is None or run_of_file(path) in run_ids) and not path.exists():
                self._footers.pop(path, None)
        return snap

    def inside(self, path: str | os.PathLike[str]) -> bool:
        """Whether ``path``, every symlink on the way resolved, lies under the root."""
        real = os.path.realpath(path)
        return real == self._real_root or real.startswith(self._real_root.rstrip(os.sep) + os.sep)

    def partition(self, partition: Path) -> tuple[list[FileInfo], dict[Path, str]]:
        snap = Snapshot()
        files = self._partition_files(partition, snap, set())
        return files, snap.bad_files

    def _partition_files(self, partition: Path, snap: Snapshot, seen: set[Path]) -> list[FileInfo]:
        entries: list[tuple[Path, int, int]] = []
        # A symlink (file, partition or table folder) must not bring a file from elsewhere into a
        # table: the pages and the CLI read the tables without the SQL console's confinement.
        linked = not self.inside(partition)
        for entry in _scandir(partition):
            name = entry.name
            if name.startswith(TMP_PREFIX) or not name.endswith(SUFFIX):
                continue
            if (linked or entry.is_symlink()) and not self.inside(entry.path):
                target = os.path.realpath(entry.path)
                snap.bad_files[Path(entry.path)] = f"links to {target}, outside the data root"
                continue
            try:
                st = entry.stat()
            except FileNotFoundError:
                continue  # removed by a compaction between listing and stat
            path = Path(entry.path)
            seen.add(path)
            entries.append((path, st.st_size, st.st_mtime_ns))
        new = [e for e in entries if not self._cached(*e)]
        if new:
            self._read_footers(partition.parent.name, new)
        infos: list[FileInfo] = []
        for path, _, _ in entries:
            if (cached := self._footers.get(path)) is None:
                continue  # vanished while its footer was read
            info = cached[2]
            if isinstance(info, str):
                snap.bad_files[path] = info
            else:
                infos.append(info)
        hidden = {name for info in infos for name in info.supersedes}
        return [info for info in infos if info.path.name not in hidden]

    def set_bad(self, path: Path, reason: str) -> None:
        """Keep ``path`` out from now on (a reader found its data damaged), until the file changes."""
        if (cached := self._footers.get(path)) is not None:
            self._footers[path] = (cached[0], cached[1], reason)

    def _cached(self, path: Path, size: int, mtime_ns: int) -> bool:
        cached = self._footers.get(path)
        return cached is not None and cached[0] == size and cached[1] == mtime_ns

    def _read_footers(self, table: str, files: list[tuple[Path, int, int]]) -> None:
        """Read and check the footers of ``files`` (new to the cache), one DuckDB query for all."""
        checked: list[tuple[Path, int, int, pq.FileMetaData, str]] = []
        for path, size, mtime_ns in files:
            try:
                meta = pq.read_metadata(path)
                schema = meta.schema.to_arrow_schema()
                problem = _type_problem(table, schema)
            except FileNotFoundError:
                continue  # vanished (compacted away): not cached, not listed
            except Exception as exc:  # pyarrow raises ArrowInvalid/OSError for damaged files
                problem = f"unreadable Parquet footer: {exc}"
            if problem:
                self._footers[path] = (size, mtime_ns, problem)
            else:
                checked.append((path, size, mtime_ns, meta, ",".join(f"{f.name}:{f.type}" for f in schema)))
        if not checked:
            return
        try:
            ranges = self._ranges([c[0] for c in checked])
        except duckdb.Error:
            # One of them is damaged in a way only DuckDB notices: find which, one file at a time.
            ranges = {}
            for path, size, mtime_ns, _, _ in checked:
                try:
                    ranges.update(self._ranges([path]))
                except duckdb.Error as exc:
                    self._footers[path] = (size, mtime_ns, f"unreadable Parquet footer: {exc}")
        for path, size, mtime_ns, meta, schema_key in checked:
            if path not in ranges:
                continue
            extra = meta.metadata or {}
            try:
                supersedes = tuple(json.loads(extra[SUPERSEDES_KEY])) if SUPERSEDES_KEY in extra else ()
            except ValueError as exc:
                self._footers[path] = (size, mtime_ns, f"unreadable {SUPERSEDES_KEY.decode()}: {exc}")
                continue
            info = FileInfo(path, size, mtime_ns, meta.num_rows, supersedes, ranges[path], schema_key)
            self._footers[path] = (size, mtime_ns, info)

    def _ranges(self, paths: list[Path]) -> dict[Path, dict[str, tuple[float, float]]]:
        """min and max of the x-axis columns per file, from row-group statistics (read by DuckDB)."""
        if self._con is None:
            self._con = duckdb.connect()
            self._con.execute("SET TimeZone = 'UTC'")
        rows = self._con.sql(_RANGES_SQL, params=[[str(p) for p in paths], list(RANGE_COLUMNS)]).fetchall()
        out: dict[Path, dict[str, tuple[float, float]]] = {path: {} for path in paths}
        for file_name, column, lo, hi in rows:
            if lo is not None and hi is not None:
                out[Path(file_name)][column] = (lo, hi)
        return out


def _type_problem(table: str, schema: pa.Schema) -> str | None:
    """Why a file cannot join ``table``'s view (a column of another kind), or None."""
    expected = SCHEMAS.get(table)
    if expected is None:
        return None
    if "run_id" in schema.names:
        return "has a run_id column; a run's id lives in its partition directory (run_id=...)"
    for column in schema:
        if column.name in expected.names:
            want = expected.field(column.name).type
            if not _same_kind(column.type, want):
                return f"column {column.name!r} is {column.type}, the {table} table stores {want}"
    return None


_KINDS = (
    pa.types.is_integer,
    pa.types.is_floating,
    pa.types.is_timestamp,
    pa.types.is_boolean,
    lambda t: pa.types.is_string(t) or pa.types.is_large_string(t),
)


def _same_kind(actual: pa.DataType, want: pa.DataType) -> bool:
    """Types DuckDB unions without turning the column into something else (int32 and int64, ...)."""
    if actual == want:
        return True
    if pa.types.is_list(want):
        return (pa.types.is_list(actual) or pa.types.is_large_list(actual)) and _same_kind(
            actual.value_type, want.value_type
        )
    return any(kind(actual) and kind(want) for kind in _KINDS)


RANGE_COLUMNS = ("step", "policy_version", "ts")


# A column's range over a file, only when every row group has statistics for it. Timestamps come
# back as text ("2026-11-25 00:50:48.054105+00"), hence the TIMESTAMPTZ cast before epoch().
_RANGES_SQL = """
SELECT file_name, path_in_schema,
       CASE WHEN count(*) = count(stats_min_value) AND count(*) = count(stats_max_value) THEN
           min(coalesce(TRY_CAST(stats_min_value AS DOUBLE), epoch(TRY_CAST(stats_min_value AS TIMESTAMPTZ))))
       END,
       CASE WHEN count(*) = count(stats_min_value) AND count(*) = count(stats_max_value) THEN
           max(coalesce(TRY_CAST(stats_max_value AS DOUBLE), epoch(TRY_CAST(stats_max_value AS TIMESTAMPTZ))))
       END
FROM parquet_metadata(?)
WHERE path_in_schema IN (SELECT unnest(?))
GROUP BY ALL
"""


def _scandir(directory: Path) -> list[os.DirEntry[str]]:
    try:
        return sorted(os.scandir(directory), key=lambda e: e.name)
    except (FileNotFoundError, NotADirectoryError):
        return []
