"""Where files live: ``<root>/<table>/run_id=<run_id>/<writer_id>-<seq>.parquet``, on disk or under
an ``s3://`` prefix.

Every name that ends up in a path is checked here, so a run id can never climb out of the root or
collide with the temp files that make writes atomic.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from logprobe.storage._objectstore import ObjectRoot, is_object_uri
from logprobe.storage._partitions import partition_name
from logprobe.storage._schema import TABLES

DEFAULT_ROOT = "./logprobe-data"
ROOT_ENV = "LOGPROBE_DIR"
SUFFIX = ".parquet"
TMP_PREFIX = "."  # temp files are hidden and end in .tmp, so no reader glob ever matches them
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")


def resolve_root(root: str | os.PathLike[str] | ObjectRoot | None) -> Path | ObjectRoot:
    """The data root: the argument, else ``$LOGPROBE_DIR``, else ``./logprobe-data``; an
    ``s3://bucket/prefix`` URI names an object-store root."""
    chosen = root if root is not None else os.environ.get(ROOT_ENV) or DEFAULT_ROOT
    if isinstance(chosen, ObjectRoot):
        return chosen
    if is_object_uri(chosen):
        return ObjectRoot(str(chosen))
    return Path(chosen).expanduser().absolute()


def resolve_local_root(root: str | os.PathLike[str] | None, what: str) -> Path:
    """The data root, which ``what`` needs on a local or shared file system."""
    resolved = resolve_root(root)
    if isinstance(resolved, ObjectRoot):
        raise ValueError(f"{what} needs a local data root, got {resolved}")
    return resolved


def check_name(kind: str, value: object) -> str:
    """Return ``value`` if it is safe as one path component, else raise a ValueError naming it."""
    if not isinstance(value, str) or not _SAFE_NAME.fullmatch(value) or value.endswith(".tmp"):
        raise ValueError(
            f"invalid {kind} {value!r}: use 1-200 characters from A-Z a-z 0-9 . _ -, "
            "starting with a letter or digit"
        )
    return value


def check_table(table: str) -> str:
    if table not in TABLES:
        raise ValueError(f"unknown table {table!r}; tables are {', '.join(TABLES)}")
    return table


def partition_dir(root: Path, table: str, run_id: str) -> Path:
    return root / table / partition_name(run_id)


def data_file_name(writer_id: str, seq: int) -> str:
    return f"{writer_id}-{seq:08d}{SUFFIX}"


def temp_path(final: Path) -> Path:
    return final.with_name(f"{TMP_PREFIX}{final.name}.{os.getpid()}.tmp")
