"""logprobe's store: typed Parquet tables that many processes append to, read in place by DuckDB.

Layout: ``<root>/<table>/run_id=<run_id>/<writer_id>-<seq>.parquet`` (Hive partitions).
"""

from storage._compact import CompactReport, compact
from storage._layout import DEFAULT_ROOT, ROOT_ENV, check_name, resolve_root
from storage._queries import (
    DEFAULT_MAX_POINTS,
    X_AXES,
    engines,
    list_runs,
    metric_names,
    metric_series,
    metrics_after,
)
from storage._schema import SCHEMAS, TABLES, VOLATILE_ENGINE_FLAGS, flatten_flags
from storage._store import QueryError, Store, connect
from storage._writer import Writer, WriterStats

__all__ = [
    "DEFAULT_MAX_POINTS",
    "DEFAULT_ROOT",
    "ROOT_ENV",
    "SCHEMAS",
    "TABLES",
    "VOLATILE_ENGINE_FLAGS",
    "X_AXES",
    "CompactReport",
    "QueryError",
    "Store",
    "Writer",
    "WriterStats",
    "check_name",
    "compact",
    "connect",
    "engines",
    "flatten_flags",
    "list_runs",
    "metric_names",
    "metric_series",
    "metrics_after",
    "resolve_root",
]
