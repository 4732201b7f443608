"""Merge a run's small files into one file per table, safely beside live readers and writers.

The merged file is written through a temp file and ``os.replace`` and names the files it replaces
in its footer; the catalog hides those from that moment on, so the originals can be deleted at
leisure (and a compaction killed between the two steps leaves a store with no duplicate rows; the
next compaction deletes the leftovers). Writers never touch existing files, so they need no
coordination; two compactions of one partition are kept apart by an ``flock`` on a lock file.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pyarrow.parquet as pq

from logprobe.storage._catalog import SUPERSEDES_KEY, Catalog, FileInfo
from logprobe.storage._layout import SUFFIX, TMP_PREFIX, data_file_name, resolve_root, temp_path
from logprobe.storage._mirror import Mirror
from logprobe.storage._objectstore import ObjectRoot
from logprobe.storage._partitions import partitions
from logprobe.storage._resources import default_memory_limit
from logprobe.storage._schema import SCHEMAS, TABLES

LOCK_NAME = ".compact.lock"
ORPHAN_TMP_AGE_S = 3600.0


@dataclass
class CompactReport:
    partitions: int = 0
    files_merged: int = 0
    files_written: int = 0
    rows: int = 0
    leftovers_removed: int = 0
    skipped_locked: int = 0
    bad_files: dict[str, str] = field(default_factory=dict)


def compact(
    root: str | os.PathLike[str] | None = None,
    *,
    run_ids: list[str] | None = None,
    tables: tuple[str, ...] = TABLES,
    min_files: int = 2,
) -> CompactReport:
    """Merge every partition (table x run) that has at least ``min_files`` live files."""
    base = resolve_root(root)
    if isinstance(base, ObjectRoot):
        return _compact_object_root(base, run_ids, tables, min_files)
    catalog = Catalog(base)
    report = CompactReport()
    for table in tables:
        for partition in partitions(base / table, run_ids):
            if not catalog.inside(partition):
                continue  # a symlink out of the root: never merge or delete files over there
            _compact_partition(catalog, partition, min_files, report)
    return report


@contextmanager
def partition_lock(partition: Path) -> Iterator[bool]:
    """Hold ``partition``'s compaction lock while the block runs; yields False (and holds nothing)
    when another process has it. Compaction and retention both take it."""
    lock_fd = os.open(partition / LOCK_NAME, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
        else:
            yield True
    finally:
        os.close(lock_fd)


def _compact_partition(catalog: Catalog, partition: Path, min_files: int, report: CompactReport) -> None:
    with partition_lock(partition) as held:
        if not held:
            report.skipped_locked += 1
            return
        report.partitions += 1
        _remove_leftovers(partition, report)
        files, bad = catalog.partition(partition)
        report.bad_files.update({str(p): r for p, r in bad.items()})
        if len(files) < min_files:
            return
        final = partition / _merged_name()
        tmp = temp_path(final)
        try:
            rows = _write_merged(files, tmp)
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
        # From here on the catalog hides the originals; deleting them is only housekeeping.
        for f in files:
            f.path.unlink(missing_ok=True)
        report.files_merged += len(files)
        report.files_written += 1
        report.rows += rows


def _write_merged(files: list[FileInfo], dest: Path) -> int:
    """Write ``files``' rows to ``dest`` in step order, with a footer naming the files it replaces;
    returns the row count.

    DuckDB streams the merge and spills the sort to disk past its memory limit, so a partition of
    any size merges in bounded memory (pyarrow's concat-and-sort held the whole partition: about
    2 billion token rows for a million-step run that keeps every token).
    """
    table = dest.parent.parent.name
    order = "ORDER BY step" if "step" in SCHEMAS[table].names else ""
    names = json.dumps([f.path.name for f in files]).replace("'", "''")
    spill = tempfile.mkdtemp(prefix="logprobe-compact-")  # DuckDB writes into it only if it must
    con = duckdb.connect(config={"memory_limit": default_memory_limit(), "temp_directory": spill})
    try:
        target = str(dest).replace("'", "''")
        count = con.execute(
            f"COPY (SELECT * FROM read_parquet(?, hive_partitioning = false, union_by_name = true) {order}) "
            f"TO '{target}' (FORMAT parquet, COMPRESSION zstd, "
            f"KV_METADATA {{'{SUPERSEDES_KEY.decode()}': '{names}'}})",
            [[str(f.path) for f in files]],
        ).fetchall()
        return int(count[0][0])
    finally:
        con.close()
        shutil.rmtree(spill, ignore_errors=True)


def _merged_name() -> str:
    return data_file_name(f"compact-{uuid.uuid4().hex[:12]}", 0)


def _superseded(partition: Path, names: list[str]) -> set[str]:
    """The files that the merged files among ``names`` replace."""
    superseded: set[str] = set()
    for name in names:
        if name.startswith("compact-") and name.endswith(SUFFIX):
            try:
                meta = pq.read_metadata(partition / name).metadata or {}
            except Exception:
                continue
            if SUPERSEDES_KEY in meta:
                superseded.update(json.loads(meta[SUPERSEDES_KEY]))
    return superseded


def _remove_leftovers(partition: Path, report: CompactReport) -> None:
    """Delete files a finished merge superseded, and temp files of writers that died long ago."""
    names = sorted(os.listdir(partition))
    superseded = _superseded(partition, names)
    now = time.time()
    for name in names:
        path = partition / name
        orphan_tmp = name.startswith(TMP_PREFIX) and name.endswith(".tmp")
        if name in superseded or (orphan_tmp and now - _mtime(path) > ORPHAN_TMP_AGE_S):
            path.unlink(missing_ok=True)
            report.leftovers_removed += 1


def _compact_object_root(
    remote: ObjectRoot, run_ids: list[str] | None, tables: tuple[str, ...], min_files: int
) -> CompactReport:
    """Compaction of an ``s3://`` root, over a local copy of its files.

    The same two steps as on disk (PUT the merged object, whose footer hides the originals; then
    delete them), but without the flock: no lock spans machines, so run one compaction per
    object-store root at a time (one cron job); two at once could each merge the same files.
    """
    mirror = object_copy(remote, tables)
    catalog = Catalog(mirror.dir)
    report = CompactReport()
    for table in tables:
        for partition in partitions(mirror.dir / table, run_ids):
            report.partitions += 1
            report.leftovers_removed += remove_object_leftovers(remote, table, partition)
            files, bad = catalog.partition(partition)
            where = f"{remote}/{table}/{partition.name}"
            report.bad_files.update({f"{where}/{p.name}": r for p, r in bad.items()})
            if len(files) < min_files:
                continue
            name = _merged_name()
            tmp = temp_path(partition / name)
            try:
                rows = _write_merged(files, tmp)
                remote.put_file(remote.key(table, partition.name, name), tmp)
            finally:
                tmp.unlink(missing_ok=True)
            # Hidden by the merged object from here on. The local copies stay: readers sharing this
            # copy drop them at their own next listing, between their queries, not under one.
            for f in files:
                remote.delete(remote.key(table, partition.name, f.path.name))
            report.files_merged += len(files)
            report.files_written += 1
            report.rows += rows
    return report


def object_copy(remote: ObjectRoot, tables: tuple[str, ...]) -> Mirror:
    """A full, current local copy of ``tables`` under an object-store root, or an OSError."""
    mirror = Mirror(remote)
    mirror.sync(full=True, tables=tables)
    if mirror.last_error is not None:
        raise OSError(f"cannot list {remote}: {mirror.last_error}")
    return mirror


def remove_object_leftovers(remote: ObjectRoot, table: str, partition: Path) -> int:
    """Delete the objects that a finished merge in ``partition`` (a local copy) superseded; the
    copies themselves go at the next sync, as in ``_compact_object_root``."""
    names = sorted(p.name for p in partition.iterdir())
    removed = 0
    for name in sorted(_superseded(partition, names) & set(names)):
        remote.delete(remote.key(table, partition.name, name))
        removed += 1
    return removed


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return time.time()
