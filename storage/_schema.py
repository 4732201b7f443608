"""Typed Arrow schemas for every table, in one place.

Schemas evolve by adding columns, never by renaming or retyping one: readers union files by column
name, so an old file simply shows NULL for a column that a newer writer added. ``run_id`` is not a
column inside the files; it lives in the Hive partition directory (``run_id=<id>``), which is what
DuckDB, Spark, Trino and Polars all expect.
"""

from __future__ import annotations

import re

import pyarrow as pa

TABLES = ("runs", "engines", "metrics", "events", "histograms", "tokens", "alerts", "findings", "sequences")

_ts = pa.timestamp("us", tz="UTC")

# Columns every row carries to say which process wrote it.
_origin = [
    pa.field("source", pa.string()),  # "trainer" | "rollout" | anything the user names
    pa.field("rank", pa.int32()),
    pa.field("worker", pa.string()),
]

SCHEMAS: dict[str, pa.Schema] = {
    "runs": pa.schema(
        [
            pa.field("name", pa.string()),
            pa.field("project", pa.string()),
            pa.field("created_at", _ts),
            pa.field("host", pa.string()),
            pa.field("pid", pa.int64()),
            pa.field("git_sha", pa.string()),
            pa.field("tags", pa.list_(pa.string())),
            pa.field("config", pa.string()),  # JSON of the user's config
            pa.field("logprobe_version", pa.string()),
            *_origin,
            # added with calibrated detectors: the run this one is judged against (its healthy twin)
            pa.field("reference_run", pa.string()),
        ]
    ),
    "engines": pa.schema(
        [
            pa.field("ts", _ts),
            pa.field("step_first", pa.int64()),
            *_origin,
            pa.field("engine", pa.string()),  # "vllm", "vllm-cpu", "torch-sampler", ...
            pa.field("vllm_version", pa.string()),
            pa.field("engine_generation", pa.string()),  # "v0" | "v1"
            pa.field("logprobs_mode", pa.string()),
            pa.field("enable_prefix_caching", pa.bool_()),
            pa.field("async_scheduling", pa.bool_()),
            pa.field("enforce_eager", pa.bool_()),
            pa.field("compilation_mode", pa.string()),
            pa.field("cudagraph_mode", pa.string()),
            pa.field("dtype", pa.string()),
            pa.field("kv_cache_dtype", pa.string()),
            pa.field("quantization", pa.string()),
            pa.field("lm_head_dtype", pa.string()),
            pa.field("batch_invariant", pa.bool_()),
            pa.field("tensor_parallel_size", pa.int32()),
            pa.field("pipeline_parallel_size", pa.int32()),
            pa.field("data_parallel_size", pa.int32()),
            pa.field("seed", pa.int64()),
            pa.field("attention_backend", pa.string()),
            pa.field("torch_version", pa.string()),
            pa.field("transformers_version", pa.string()),
            pa.field("device", pa.string()),
            pa.field("flags", pa.string()),  # JSON of every resolved engine arg
            pa.field("fingerprint", pa.string()),
            # added with the vLLM collector (schemas grow by appending columns)
            pa.field("lm_head_weight_dtype", pa.string()),
            pa.field("generation_config", pa.string()),
        ]
    ),
    "metrics": pa.schema(
        [
            pa.field("step", pa.int64()),
            pa.field("policy_version", pa.int64()),
            pa.field("ts", _ts),
            *_origin,
            pa.field("name", pa.string()),
            pa.field("value", pa.float64()),
        ]
    ),
    "events": pa.schema(
        [
            pa.field("step", pa.int64()),
            pa.field("ts", _ts),
            *_origin,
            pa.field("kind", pa.string()),
            pa.field("payload", pa.string()),  # JSON
        ]
    ),
    # Long format (one row per bin) so SQL engines can pivot it into a heatmap without list functions.
    "histograms": pa.schema(
        [
            pa.field("step", pa.int64()),
            pa.field("policy_version", pa.int64()),
            pa.field("ts", _ts),
            *_origin,
            pa.field("name", pa.string()),
            pa.field("bin", pa.int32()),
            pa.field("lo", pa.float64()),
            pa.field("hi", pa.float64()),
            pa.field("count", pa.int64()),
        ]
    ),
    "tokens": pa.schema(
        [
            pa.field("step", pa.int64()),
            pa.field("policy_version", pa.int64()),
            pa.field("ts", _ts),
            *_origin,
            pa.field("seq_index", pa.int64()),
            pa.field("position", pa.int64()),
            pa.field("token_id", pa.int64()),
            pa.field("token_text", pa.string()),
            pa.field("trainer_logprob", pa.float64()),
            pa.field("rollout_logprob", pa.float64()),
            pa.field("log_ratio", pa.float64()),  # trainer - rollout
        ]
    ),
    "alerts": pa.schema(
        [
            pa.field("step", pa.int64()),
            pa.field("ts", _ts),
            *_origin,
            pa.field("rule", pa.string()),
            pa.field("metric", pa.string()),
            pa.field("severity", pa.string()),
            pa.field("value", pa.float64()),
            pa.field("threshold", pa.float64()),
            pa.field("state", pa.string()),  # "firing" | "resolved"
            pa.field("message", pa.string()),
            # added with the cause library: the likely cause named when the alert fired
            pa.field("cause", pa.string()),
        ]
    ),
    # One row each time a detector's finding opens, worsens or closes; readers keep the newest row
    # per (run_id, metric, detector, step_first).
    "findings": pa.schema(
        [
            pa.field("ts", _ts),
            *_origin,
            pa.field("metric", pa.string()),
            pa.field("detector", pa.string()),
            pa.field("severity", pa.string()),
            pa.field("step_first", pa.int64()),
            pa.field("step_last", pa.int64()),
            pa.field("step_detected", pa.int64()),
            pa.field("value", pa.float64()),
            pa.field("message", pa.string()),
            pa.field("state", pa.string()),  # "open" | "closed"
        ]
    ),
    # A few whole sequences per step (the one with the largest mismatch and random ones): what the
    # diagnosis draws trainer against rollout from, and what a replay re-scores. Bounded per step by
    # the collector and covered by retention like ``tokens``.
    "sequences": pa.schema(
        [
            pa.field("step", pa.int64()),
            pa.field("policy_version", pa.int64()),
            pa.field("ts", _ts),
            *_origin,
            pa.field("seq_index", pa.int64()),
            pa.field("reason", pa.string()),  # "largest_mismatch" | "random"
            pa.field("prompt_len", pa.int64()),
            pa.field("rollout_version", pa.int64()),  # the policy version that generated it
            pa.field("weight_version", pa.int64()),  # the engine's weight version, when it says
            pa.field("prompt_ids", pa.list_(pa.int64())),
            pa.field("token_ids", pa.list_(pa.int64())),
            pa.field("trainer_logprobs", pa.list_(pa.float64())),
            pa.field("rollout_logprobs", pa.list_(pa.float64())),
        ]
    ),
}

# Keys of ``engines.flags`` whose values differ between two engines with identical settings (ids,
# ports, shared-memory names, model and cache paths, the custom ops a process already registered):
# kept in ``flags`` for the record, left out of fingerprints, flag diffs and flag correlation.
VOLATILE_ENGINE_FLAGS = re.compile(
    r"(instance_id|engine_id|_ident$|abled_custom_ops|(^|[._])port$|cache_dir|cache_save_path|"
    r"compile_cache|local_cache|shm|uuid|(^|[._])ip$|host_ip|rpc_base_path|served_model_name|"
    r"(^|\.)model$|(^|\.)tokenizer$|weight_path)",
    re.IGNORECASE,
)


def flatten_flags(value: object, prefix: str = "") -> dict[str, object]:
    """Nested engine flags as ``{"model_config.dtype": ...}``: the keys fingerprints, flag diffs
    and ``VOLATILE_ENGINE_FLAGS`` speak in."""
    if isinstance(value, dict):
        out: dict[str, object] = {}
        for k, v in value.items():
            out.update(flatten_flags(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: value}


_DUCKDB_TYPES = {
    pa.string(): "VARCHAR",
    pa.int64(): "BIGINT",
    pa.int32(): "INTEGER",
    pa.float64(): "DOUBLE",
    pa.bool_(): "BOOLEAN",
    _ts: "TIMESTAMPTZ",
    pa.list_(pa.string()): "VARCHAR[]",
    pa.list_(pa.int64()): "BIGINT[]",
    pa.list_(pa.float64()): "DOUBLE[]",
}


def duckdb_columns(table: str) -> str:
    """Column list for a DuckDB ``CREATE TABLE``: the typed, empty stand-in for a table with no files."""
    cols = [f'"{f.name}" {_DUCKDB_TYPES[f.type]}' for f in SCHEMAS[table]]
    return ", ".join([*cols, '"run_id" VARCHAR'])
