"""logprobe's store: typed Parquet tables that many processes append to, read in place by DuckDB.

Layout: ``<root>/<table>/run_id=<run_id>/<writer_id>-<seq>.parquet`` (Hive partitions).
"""

from logprobe.storage._compact import CompactReport, compact
from logprobe.storage._layout import DEFAULT_ROOT, ROOT_ENV, check_name, resolve_root
from logprobe.storage._live_series import LiveSeries
from logprobe.storage._mirror import cache_root
from logprobe.storage._name_maps import SOURCES, TRL, VERL, map_name
from logprobe.storage._partitions import files_of_runs, run_of_file
from logprobe.storage._queries import (
    DEFAULT_MAX_POINTS,
    X_AXES,
    alerts,
    engines,
    events,
    findings,
    histogram_matrix,
    list_runs,
    metric_names,
    metric_series,
    monitored_runs,
    sequences,
    span_means,
    step_metrics,
    version_gaps,
    worst_tokens,
)
from logprobe.storage._retention import RetentionReport, apply_retention, check_keep
from logprobe.storage._schema import SCHEMAS, TABLES, VOLATILE_ENGINE_FLAGS, flatten_flags
from logprobe.storage._store import QueryError, Store, connect
from logprobe.storage._writer import Writer, WriterStats

__all__ = [
    "DEFAULT_MAX_POINTS",
    "DEFAULT_ROOT",
    "ROOT_ENV",
    "SCHEMAS",
    "SOURCES",
    "TABLES",
    "TRL",
    "VERL",
    "VOLATILE_ENGINE_FLAGS",
    "X_AXES",
    "CompactReport",
    "LiveSeries",
    "QueryError",
    "RetentionReport",
    "Store",
    "Writer",
    "WriterStats",
    "alerts",
    "apply_retention",
    "cache_root",
    "check_keep",
    "check_name",
    "compact",
    "connect",
    "engines",
    "events",
    "files_of_runs",
    "findings",
    "flatten_flags",
    "histogram_matrix",
    "list_runs",
    "map_name",
    "metric_names",
    "metric_series",
    "monitored_runs",
    "resolve_root",
    "run_of_file",
    "sequences",
    "span_means",
    "step_metrics",
    "version_gaps",
    "worst_tokens",
]
