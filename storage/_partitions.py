"""How a run's files are named: ``<table>/run_id=<run_id>/<file>``, Hive-style.

The one place that builds a partition's folder name, reads the run id back from a folder or a
file's path, and lists a table's partitions; everything else (writer, catalog, compaction,
retention, the object-store copy, the readers) asks here. A leaf module: the layout, the object
store and the catalog all import it.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Iterable
from pathlib import Path

PREFIX = "run_id="


def partition_name(run_id: str) -> str:
    """The folder name of ``run_id``'s partition (``run_id=<run_id>``)."""
    return PREFIX + run_id


def is_partition(name: str | os.PathLike[str]) -> bool:
    """Whether the last component of ``name`` is a partition folder."""
    return os.path.basename(os.fspath(name)).startswith(PREFIX)


def run_of_partition(partition: str | os.PathLike[str]) -> str:
    """The run id of a partition folder (its path or its name)."""
    return os.path.basename(os.fspath(partition))[len(PREFIX) :]


def run_of_file(path: str | os.PathLike[str]) -> str | None:
    """The run id of a data file, from the partition folder it lies in; None outside one."""
    folder = os.path.basename(os.path.dirname(os.fspath(path)))
    return folder[len(PREFIX) :] if folder.startswith(PREFIX) else None


def files_of_runs(paths: Iterable[str], run_ids: Collection[str]) -> list[str]:
    """The paths among ``paths`` that belong to one of ``run_ids``, in their order."""
    return [p for p in paths if run_of_file(p) in run_ids]


def partitions(table_dir: Path, run_ids: Collection[str] | None = None) -> list[Path]:
    """A table's partition folders in name order (only those of ``run_ids`` when given); none
    when the table has no folder yet."""
    try:
        entries = [e for e in os.scandir(table_dir) if e.is_dir() and e.name.startswith(PREFIX)]
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(Path(e.path) for e in entries if run_ids is None or run_of_partition(e.name) in run_ids)
