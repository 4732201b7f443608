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
    FilePick,
    alerts,
    aligned_steps,
    engines,
    events,
    findings,
    first_rollout_version,
    histogram_matrix,
    list_runs,
    metric_names,
    metric_quantile,
    metric_rows,
    metric_series,
    monitored_runs,
    reference_run,
    replayable_sequences,
    rows_past_cursors,
    run_record,
    sequences,
    series_rows,
    span_means,
    step_metrics,
    token_steps,
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
    "FilePick",
    "LiveSeries",
    "QueryError",
    "RetentionReport",
    "Store",
    "Writer",
    "WriterStats",
    "alerts",
    "aligned_steps",
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
    "first_rollout_version",
    "flatten_flags",
    "histogram_matrix",
    "list_runs",
    "map_name",
    "metric_names",
    "metric_quantile",
    "metric_rows",
    "metric_series",
    "monitored_runs",
    "reference_run",
    "replayable_sequences",
    "resolve_root",
    "rows_past_cursors",
    "run_of_file",
    "run_record",
    "sequences",
    "series_rows",
    "span_means",
    "step_metrics",
    "token_steps",
    "version_gaps",
    "worst_tokens",
]
