"""Which Parquet files make up each table right now.

A file enters the catalog only if its footer reads: a truncated or foreign file is listed in
``bad_files`` with the reason and left out, so one damaged file never takes the store down. Footers
are cached by (path, size, mtime) since committed files never change, which keeps a live refresh to
one directory listing plus the footers of new files.

Compaction writes a merged file whose footer names the files it replaces (``logprobe.supersedes``);
the catalog hides those, so a reader never counts a row twice, even if compaction died before it
could delete the originals.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq

from storage._layout import SUFFIX, TMP_PREFIX
from storage._schema import TABLES

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


@dataclass
class Snapshot:
    """The live files per table, plus the files that were skipped and why."""

    files: dict[str, list[FileInfo]] = field(default_factory=dict)
    bad_files: dict[Path, str] = field(default_factory=dict)

    def paths(self, table: str) -> list[str]:
        return [str(f.path) for f in self.files.get(table, [])]


class Catalog:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._footers: dict[Path, tuple[int, int, FileInfo | str]] = {}

    def scan(self, tables: tuple[str, ...] = TABLES, run_ids: set[str] | None = None) -> Snapshot:
        snap = Snapshot()
        seen: set[Path] = set()
        for table in tables:
            infos: list[FileInfo] = []
            table_dir = self.root / table
            for partition in _listdir(table_dir):
                if not partition.name.startswith("run_id="):
                    continue
                if run_ids is not None and partition.name[len("run_id=") :] not in run_ids:
                    continue
                infos.extend(self._partition_files(partition, snap, seen))
            snap.files[table] = infos
        # Forget footers of files that are gone (compacted away or deleted).
        for path in list(self._footers):
            if path not in seen and (run_ids is None or path.parent.name[len("run_id=") :] in run_ids):
                del self._footers[path]
        return snap

    def partition(self, partition: Path) -> tuple[list[FileInfo], dict[Path, str]]:
        snap = Snapshot()
        files = self._partition_files(partition, snap, set())
        return files, snap.bad_files

    def _partition_files(self, partition: Path, snap: Snapshot, seen: set[Path]) -> list[FileInfo]:
        infos: list[FileInfo] = []
        for entry in _scandir(partition):
            name = entry.name
            if name.startswith(TMP_PREFIX) or not name.endswith(SUFFIX):
                continue
            try:
                st = entry.stat()
            except FileNotFoundError:
                continue  # removed by a compaction between listing and stat
            path = Path(entry.path)
            seen.add(path)
            info = self._footer(path, st.st_size, st.st_mtime_ns)
            if isinstance(info, str):
                snap.bad_files[path] = info
            else:
                infos.append(info)
        hidden = {name for info in infos for name in info.supersedes}
        return [info for info in infos if info.path.name not in hidden]

    def _footer(self, path: Path, size: int, mtime_ns: int) -> FileInfo | str:
        cached = self._footers.get(path)
        if cached and cached[0] == size and cached[1] == mtime_ns:
            return cached[2]
        try:
            meta = pq.read_metadata(path)
            extra = meta.metadata or {}
            supersedes = tuple(json.loads(extra[SUPERSEDES_KEY])) if SUPERSEDES_KEY in extra else ()
            ranges = _column_ranges(meta)
            result: FileInfo | str = FileInfo(path, size, mtime_ns, meta.num_rows, supersedes, ranges)
        except FileNotFoundError:
            return "file vanished while reading"
        except Exception as exc:  # pyarrow raises ArrowInvalid/OSError for damaged files
            result = f"unreadable Parquet footer: {exc}"
        self._footers[path] = (size, mtime_ns, result)
        return result


RANGE_COLUMNS = ("step", "policy_version", "ts")


def _column_ranges(meta: pq.FileMetaData) -> dict[str, tuple[float, float]]:
    names = meta.schema.names
    out: dict[str, tuple[float, float]] = {}
    for column in RANGE_COLUMNS:
        if column not in names:
            continue
        j = names.index(column)
        lo = hi = None
        for i in range(meta.num_row_groups):
            stats = meta.row_group(i).column(j).statistics
            if stats is None or not stats.has_min_max:
                break  # a row group without statistics: no range for this column
            a, b = _number(stats.min), _number(stats.max)
            lo = a if lo is None else min(lo, a)
            hi = b if hi is None else max(hi, b)
        else:
            if lo is not None:
                out[column] = (lo, hi)
    return out


def _number(value: object) -> float:
    return value.timestamp() if hasattr(value, "timestamp") else float(value)


def _listdir(directory: Path) -> list[Path]:
    try:
        return sorted(Path(e.path) for e in os.scandir(directory) if e.is_dir())
    except (FileNotFoundError, NotADirectoryError):
        return []


def _scandir(directory: Path) -> list[os.DirEntry[str]]:
    try:
        return sorted(os.scandir(directory), key=lambda e: e.name)
    except (FileNotFoundError, NotADirectoryError):
        return []
