"""Retention: delete whole files of bulky tables once their newest row is older than N days.

Per-token rows and histograms are most of a store's bytes but only matter while someone drills into
recent steps; metrics, events and alerts are small and are what a comparison months later reads. So
retention is per table (``{"tokens": 7}``) and works on whole files: a file goes when its newest row
(``ts`` max from the footer's statistics, read by the catalog) is older than the cutoff. Nothing is
rewritten, so a file that mixes old and fresh rows stays until its fresh rows age too; compact after
retention, not before, if you want old steps gone while a run is still writing.

``runs`` and ``engines`` are refused: they say what a run is and which engine produced it, and every
page and query joins on them.

Each partition is handled under the same ``flock`` compaction takes, and its compaction leftovers
are removed first: a merged ``compact-*`` file hides the originals its footer names, so deleting a
merged file while those originals are still there (a compaction killed between its rename and its
deletes) would bring their rows back.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from logprobe.storage._catalog import Catalog, FileInfo
from logprobe.storage._compact import (
    CompactReport,
    _remove_leftovers,
    object_copy,
    partition_lock,
    remove_object_leftovers,
)
from logprobe.storage._layout import resolve_root
from logprobe.storage._objectstore import ObjectRoot
from logprobe.storage._partitions import partitions
from logprobe.storage._schema import TABLES

# Tables that identify a run; deleting their rows would orphan everything else the run logged.
PROTECTED_TABLES = ("runs", "engines")
SECONDS_PER_DAY = 86_400.0


@dataclass
class TableRetention:
    """What retention removed from one table."""

    files_deleted: int = 0
    rows_deleted: int = 0
    bytes_freed: int = 0


@dataclass
class RetentionReport:
    files_deleted: int = 0
    rows_deleted: int = 0
    bytes_freed: int = 0
    tables: dict[str, TableRetention] = field(default_factory=dict)
    # Files with no ``ts`` statistics (an old writer, a column of NULLs): their age is unknown, so
    # they are kept rather than guessed at.
    kept_no_stats: int = 0
    partitions: int = 0
    skipped_locked: int = 0
    leftovers_removed: int = 0
    bad_files: dict[str, str] = field(default_factory=dict)
    # Partitions left untouched because their compaction leftovers could not be removed.
    errors: dict[str, str] = field(default_factory=dict)


def check_keep(keep: Mapping[str, float]) -> dict[str, float]:
    """``keep`` as ``{table: days}``, or a ValueError naming the first table that cannot take it.

    Checked in full before any file is touched, so a typo never leaves a half-applied policy.
    """
    if not isinstance(keep, Mapping):
        raise TypeError(f"keep must map table name -> days, got {type(keep).__name__}")
    out: dict[str, float] = {}
    for table, days in keep.items():
        if table in PROTECTED_TABLES:
            raise ValueError(
                f"retention on table {table!r} is refused: runs and engines identify a run and are kept "
                "for as long as the run is"
            )
        if table not in TABLES:
            allowed = ", ".join(t for t in TABLES if t not in PROTECTED_TABLES)
            raise ValueError(f"unknown table {table!r} for retention; tables: {allowed}")
        if isinstance(days, bool) or not isinstance(days, int | float):
            raise ValueError(f"days to keep for table {table!r} must be a number, got {days!r}")
        if math.isnan(days) or days < 0:
            raise ValueError(f"days to keep for table {table!r} must be >= 0, got {days!r}")
        out[table] = float(days)
    return out


def apply_retention(
    root: str | os.PathLike[str] | None,
    keep: Mapping[str, float],
    *,
    now: float | None = None,
    run_ids: list[str] | None = None,
) -> RetentionReport:
    """Delete the files of each table in ``keep`` whose newest row is more than ``keep[table]`` days old.

    ``now`` is epoch seconds (default: the clock); ``run_ids`` limits it to those runs. A partition
    another process is compacting is skipped and counted in ``skipped_locked``; the next call gets it.
    """
    days_by_table = check_keep(keep)
    base = resolve_root(root)
    now = time.time() if now is None else float(now)
    if isinstance(base, ObjectRoot):
        return _object_root_retention(base, days_by_table, now, run_ids)
    catalog = Catalog(base)
    report = RetentionReport()
    for table, days in days_by_table.items():
        report.tables[table] = TableRetention()
        cutoff = now - days * SECONDS_PER_DAY
        for partition in partitions(base / table, run_ids):
            if not catalog.inside(partition):
                continue  # a symlink out of the root: never delete files over there
            _expire_partition(catalog, table, partition, cutoff, report)
    return report


def _expire_partition(
    catalog: Catalog, table: str, partition: Path, cutoff: float, report: RetentionReport
) -> None:
    with partition_lock(partition) as held:
        if not held:
            report.skipped_locked += 1
            return
        report.partitions += 1
        leftovers = CompactReport()
        try:
            _remove_leftovers(partition, leftovers)
        except OSError as exc:
            # A merged file may still hide originals that are on disk: deleting it could resurrect them.
            report.errors[str(partition)] = f"could not remove compaction leftovers: {exc}"
            return
        finally:
            report.leftovers_removed += leftovers.leftovers_removed
        _expire_files(catalog, table, partition, cutoff, report, _delete_file)


def _object_root_retention(
    remote: ObjectRoot, days_by_table: dict[str, float], now: float, run_ids: list[str] | None
) -> RetentionReport:
    """Retention under an ``s3://`` root, over a local copy; like its compaction, without a lock
    (no lock spans machines): run it from the one job that also compacts that root."""
    mirror = object_copy(remote, tuple(days_by_table))
    catalog = Catalog(mirror.dir)
    report = RetentionReport()
    for table, days in days_by_table.items():
        report.tables[table] = TableRetention()
        cutoff = now - days * SECONDS_PER_DAY
        for partition in partitions(mirror.dir / table, run_ids):
            report.partitions += 1
            report.leftovers_removed += remove_object_leftovers(remote, table, partition)

            def delete(path: Path, table: str = table) -> None:
                # the local copy goes at the next sync of whoever reads it (see _compact_object_root)
                remote.delete(remote.key(table, path.parent.name, path.name))

            _expire_files(catalog, table, partition, cutoff, report, delete)
    return report


def _expire_files(
    catalog: Catalog,
    table: str,
    partition: Path,
    cutoff: float,
    report: RetentionReport,
    delete: Callable[[Path], None],
) -> None:
    files, bad = catalog.partition(partition)
    report.bad_files.update({str(p): r for p, r in bad.items()})
    for info in files:
        newest = _newest_ts(info)
        if newest is None:
            report.kept_no_stats += 1
        elif newest < cutoff:
            delete(info.path)
            _count(report, table, info)


def _newest_ts(info: FileInfo) -> float | None:
    """The file's newest ``ts`` in epoch seconds, from its footer statistics; None if unknown."""
    ts = info.ranges.get("ts")
    return None if ts is None else float(ts[1])


def _delete_file(path: Path) -> None:
    """Remove one data file (already gone is fine: a concurrent cleanup got there first)."""
    path.unlink(missing_ok=True)


def _count(report: RetentionReport, table: str, info: FileInfo) -> None:
    per_table = report.tables[table]
    for target in (report, per_table):
        target.files_deleted += 1
        target.rows_deleted += info.num_rows
        target.bytes_freed += info.size
