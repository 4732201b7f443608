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
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from storage._catalog import SUPERSEDES_KEY, Catalog
from storage._layout import SUFFIX, TMP_PREFIX, data_file_name, resolve_root, run_id_of, temp_path
from storage._schema import TABLES

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
    catalog = Catalog(base)
    report = CompactReport()
    for table in tables:
        table_dir = base / table
        if not table_dir.is_dir():
            continue
        for partition in sorted(p for p in table_dir.iterdir() if p.name.startswith("run_id=")):
            if run_ids is not None and run_id_of(partition) not in run_ids:
                continue
            if not catalog.inside(partition):
                continue  # a symlink out of the root: never merge or delete files over there
            _compact_partition(catalog, partition, min_files, report)
    return report


def _compact_partition(catalog: Catalog, partition: Path, min_files: int, report: CompactReport) -> None:
    lock_fd = os.open(partition / LOCK_NAME, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            report.skipped_locked += 1
            return
        report.partitions += 1
        _remove_leftovers(partition, report)
        files, bad = catalog.partition(partition)
        report.bad_files.update({str(p): r for p, r in bad.items()})
        if len(files) < min_files:
            return
        merged = pa.concat_tables([pq.read_table(f.path) for f in files], promote_options="default")
        if "step" in merged.column_names:
            merged = merged.sort_by([("step", "ascending")])
        merged = merged.replace_schema_metadata({SUPERSEDES_KEY: json.dumps([f.path.name for f in files])})
        final = partition / data_file_name(f"compact-{uuid.uuid4().hex[:12]}", 0)
        tmp = temp_path(final)
        try:
            pq.write_table(merged, tmp, compression="zstd")
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
        # From here on the catalog hides the originals; deleting them is only housekeeping.
        for f in files:
            f.path.unlink(missing_ok=True)
        report.files_merged += len(files)
        report.files_written += 1
        report.rows += merged.num_rows
    finally:
        os.close(lock_fd)


def _remove_leftovers(partition: Path, report: CompactReport) -> None:
    """Delete files a finished merge superseded, and temp files of writers that died long ago."""
    superseded: set[str] = set()
    names = sorted(os.listdir(partition))
    for name in names:
        if name.startswith("compact-") and name.endswith(SUFFIX):
            try:
                meta = pq.read_metadata(partition / name).metadata or {}
            except Exception:
                continue
            if SUPERSEDES_KEY in meta:
                superseded.update(json.loads(meta[SUPERSEDES_KEY]))
    now = time.time()
    for name in names:
        path = partition / name
        orphan_tmp = name.startswith(TMP_PREFIX) and name.endswith(".tmp")
        if name in superseded or (orphan_tmp and now - _mtime(path) > ORPHAN_TMP_AGE_S):
            path.unlink(missing_ok=True)
            report.leftovers_removed += 1


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return time.time()
