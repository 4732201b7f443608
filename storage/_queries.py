"""The read queries the CLI, the dashboard and the monitor share.

All of them run inside DuckDB over the files (no Python loops over rows) and return pyarrow Tables.
Downsampling keeps min, max and last per bucket, never a random sample, so a spike survives any zoom.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa
import pyarrow.compute as pc

from logprobe.storage._store import Store

DEFAULT_MAX_POINTS = 1000
DEFAULT_STALE_AFTER_S = 300.0
X_AXES = {"step": "step", "policy_version": "policy_version", "time": "epoch(ts)"}
_X_COLUMNS = {"step": "step", "policy_version": "policy_version", "time": "ts"}


def list_runs(store: Store, *, stale_after_s: float = DEFAULT_STALE_AFTER_S) -> pa.Table:
    """One row per run: identity, last step, last write (and its age in seconds), points and status.

    Status is ``finished`` when every process that started the run has closed it, ``live`` when
    something was written within ``stale_after_s`` seconds, ``stale`` otherwise.
    """
    # Points, last step and last write per run come from the metric files' footers, not a scan.
    store.con.register(_METRIC_SUMMARY, store.run_summary("metrics"))
    try:
        return _list_runs(store, stale_after_s)
    finally:
        store.con.unregister(_METRIC_SUMMARY)


_METRIC_SUMMARY = "_logprobe_metric_summary"


def _list_runs(store: Store, stale_after_s: float) -> pa.Table:
    return store.sql(
        """
        WITH r AS (
            SELECT run_id,
                   arg_min(name, created_at) AS name,
                   arg_min(project, created_at) AS project,
                   min(created_at) AS created_at,
                   arg_min(host, created_at) AS host,
                   arg_min(git_sha, created_at) AS git_sha,
                   arg_min(tags, created_at) AS tags,
                   count(*) AS processes
            FROM runs GROUP BY run_id),
        m AS (SELECT run_id, last_step, last_ts AS last_metric_ts, rows AS points
              FROM _logprobe_metric_summary),
        e AS (SELECT run_id, max(ts) AS last_event_ts,
                     count(*) FILTER (WHERE kind = 'run_start') AS starts,
                     count(*) FILTER (WHERE kind = 'run_end') AS ends
              FROM events GROUP BY run_id),
        ids AS (SELECT run_id FROM r UNION SELECT run_id FROM m UNION SELECT run_id FROM e)
        SELECT ids.run_id, r.name, r.project, r.created_at, r.host, r.git_sha, r.tags,
               coalesce(r.processes, 0) AS processes, m.last_step, coalesce(m.points, 0) AS points,
               greatest(m.last_metric_ts, e.last_event_ts, r.created_at) AS last_write,
               epoch(now()) - epoch(greatest(m.last_metric_ts, e.last_event_ts, r.created_at)) AS age_s,
               CASE WHEN coalesce(e.starts, 0) > 0 AND e.ends >= e.starts THEN 'finished'
                    WHEN greatest(m.last_metric_ts, e.last_event_ts, r.created_at)
                         >= now() - to_seconds(?) THEN 'live'
                    ELSE 'stale' END AS status
        FROM ids LEFT JOIN r USING (run_id) LEFT JOIN m USING (run_id) LEFT JOIN e USING (run_id)
        ORDER BY r.created_at DESC NULLS LAST, ids.run_id
        """,
        [float(stale_after_s)],
    )


def metric_names(store: Store, run_ids: Sequence[str] | None = None) -> list[str]:
    where, params = _run_filter(run_ids)
    rows = store.sql(f"SELECT DISTINCT name FROM metrics {where} ORDER BY name", params)
    return rows.column("name").to_pylist()


def metric_series(
    store: Store,
    run_ids: Sequence[str],
    names: Sequence[str],
    *,
    x: str = "step",
    max_points: int = DEFAULT_MAX_POINTS,
    x_min: float | None = None,
    x_max: float | None = None,
) -> pa.Table:
    """Each (run, metric) series reduced to at most ``max_points`` buckets over ``x``.

    Buckets are equal slices of the run's x range (shared by all of its metrics, so charts of one
    run line up); a series coarser than the buckets comes back unreduced, one bucket per x value
    (several rows at one x, e.g. from several ranks, share it). Columns: run_id, name, x (the x of
    the bucket's last point), x_first, x_last, min, max, last, mean, count.

    The range is asked first and inlined, one run at a time: a join against a per-series span
    table made the 1M-point group-by 3x slower (bench/chart_path.py measures this path).
    """
    if x not in X_AXES:
        raise ValueError(f"unknown x axis {x!r}; choose one of {', '.join(X_AXES)}")
    if max_points < 1:
        raise ValueError(f"max_points must be >= 1, got {max_points}")
    parts = [
        _run_series(store, run_id, list(names), x, max_points, x_min, x_max)
        for run_id in dict.fromkeys(run_ids)
        if names
    ]
    return pa.concat_tables(parts) if parts else store.sql(_EMPTY_SERIES)


def _run_series(
    store: Store,
    run_id: str,
    names: list[str],
    x: str,
    n: int,
    x_min: float | None,
    x_max: float | None,
) -> pa.Table:
    """The run's x range comes from the files' footer statistics when they have them (no scan); a
    metric that covers only a sliver of that range (one added late) is re-bucketed over its own."""
    x_expr = X_AXES[x]
    bounds, params = "", [names]
    for op, bound in ((">=", x_min), ("<=", x_max)):
        if bound is not None:
            bounds += f" AND CAST({x_expr} AS DOUBLE) {op} ?"
            params.append(float(bound))
    order = "ts" if x == "time" else "step"
    source = (
        f"SELECT name, CAST({x_expr} AS DOUBLE) AS x, {order} AS o, value FROM {{source}} "
        f"WHERE name IN (SELECT unnest(?)) AND {x_expr} IS NOT NULL{bounds}"
    )
    span = store.column_range("metrics", run_id, _X_COLUMNS[x])
    if span is not None:
        span = (
            max(span[0], x_min) if x_min is not None else span[0],
            min(span[1], x_max) if x_max is not None else span[1],
        )
    else:
        span = tuple(
            store.sql_over_run("metrics", run_id, f"SELECT min(x), max(x) FROM ({source})", params)
            .to_pylist()[0]
            .values()
        )
        if span[0] is None:
            return store.sql(_EMPTY_SERIES)
    table = _bucket(store, run_id, source, params, span, n)
    counts = table.group_by("name").aggregate([("count", "sum"), ("count", "count")]).to_pylist()
    sparse = [c["name"] for c in counts if c["count_count"] < n // 4 and c["count_sum"] > c["count_count"]]
    if not sparse:
        return table
    keep = pc.invert(pc.is_in(table.column("name"), pa.array(sparse)))
    parts = [table.filter(keep)]
    for name in sparse:
        own = [[name], *params[1:]]
        span_query = f"SELECT min(x), max(x) FROM ({source})"
        lo, hi = store.sql_over_run("metrics", run_id, span_query, own).to_pylist()[0].values()
        parts.append(_bucket(store, run_id, source, own, (lo, hi), n))
    return pa.concat_tables(parts).sort_by([("name", "ascending"), ("x", "ascending")])


def _bucket(store: Store, run_id: str, source: str, params: list, span: tuple, n: int) -> pa.Table:
    lo, hi = span
    width = (hi - lo) / n if hi > lo else 1.0
    # "last" is the latest row by step (by ts on the time axis); a struct (x, ts) key was 40% slower.
    return store.sql_over_run(
        "metrics",
        run_id,
        f"""
        SELECT CAST(? AS VARCHAR) AS run_id, name, max(x) AS x, min(x) AS x_first, max(x) AS x_last,
               min(value) AS min, max(value) AS max, arg_max(value, o) AS last,
               avg(value) AS mean, count(*) AS count
        FROM ({source})
        GROUP BY name, least(greatest(floor((x - ?) / ?), 0), ? - 1)
        ORDER BY name, x
        """,
        [run_id, *params, lo, width, n],
    )


_EMPTY_SERIES = """
    SELECT NULL::VARCHAR AS run_id, NULL::VARCHAR AS name, NULL::DOUBLE AS x, NULL::DOUBLE AS x_first,
           NULL::DOUBLE AS x_last, NULL::DOUBLE AS min, NULL::DOUBLE AS max, NULL::DOUBLE AS last,
           NULL::DOUBLE AS mean, NULL::BIGINT AS count WHERE false
"""


def engines(store: Store, run_ids: Sequence[str] | None = None) -> pa.Table:
    """The engine configurations seen per run, in the order they took effect (the step they
    start at, then when they were recorded)."""
    where, params = _run_filter(run_ids)
    return store.sql(f"SELECT * FROM engines {where} ORDER BY run_id, coalesce(step_first, -1), ts", params)


def span_means(store: Store, metric: str, spans: Sequence[tuple[str, int, int | None]]) -> list[float | None]:
    """The mean of ``metric`` over each (run_id, first step, last step or None for open-ended) span,
    finite values only, in one pass; None for a span with no value."""
    if not spans:
        return []
    run_ids, firsts, lasts = (list(column) for column in zip(*spans, strict=True))
    rows = store.sql(
        "WITH s AS (SELECT unnest(?) AS i, unnest(?) AS run_id, unnest(?) AS first, "
        "unnest(?::BIGINT[]) AS last) "
        "SELECT s.i, avg(m.value) AS mean FROM s JOIN metrics m ON m.run_id = s.run_id AND m.name = ? "
        "AND m.step >= s.first AND (s.last IS NULL OR m.step <= s.last) AND isfinite(m.value) GROUP BY s.i",
        [list(range(len(spans))), run_ids, firsts, lasts, metric],
    ).to_pylist()
    means: list[float | None] = [None] * len(spans)
    for row in rows:
        means[row["i"]] = row["mean"]
    return means


def _run_filter(run_ids: Sequence[str] | None) -> tuple[str, list]:
    if run_ids is None:
        return "", []
    return "WHERE run_id IN (SELECT unnest(?))", [list(run_ids)]


def events(store: Store, run_ids: Sequence[str], kinds: Sequence[str] | None = None) -> pa.Table:
    """Events of these runs (optionally only some kinds), oldest first: chart markers and timelines."""
    params: list = [list(run_ids)]
    kind_filter = ""
    if kinds is not None:
        kind_filter = " AND kind IN (SELECT unnest(?))"
        params.append(list(kinds))
    return store.sql(
        "SELECT run_id, step, ts, source, kind, payload FROM events "
        f"WHERE run_id IN (SELECT unnest(?)){kind_filter} ORDER BY ts, run_id",
        params,
    )


def alerts(store: Store, run_ids: Sequence[str] | None = None) -> pa.Table:
    """Alert transitions (firing and resolved) recorded in the store, newest first."""
    where, params = _run_filter(run_ids)
    return store.sql(
        "SELECT ts, run_id, step, rule, metric, severity, state, value, threshold, message, cause "
        f"FROM alerts {where} ORDER BY ts DESC, run_id",
        params,
    )


def findings(store: Store, run_ids: Sequence[str] | None = None) -> pa.Table:
    """The newest row of each finding (one detector's excursion on one metric) kept in the store by
    a watcher or an inline monitor, newest detection first."""
    where, params = _run_filter(run_ids)
    return store.sql(
        "SELECT run_id, metric, detector, severity, step_first, step_last, step_detected, value, "
        f"message, state, source, ts FROM findings {where} QUALIFY row_number() OVER (PARTITION BY "
        "run_id, metric, detector, step_first ORDER BY ts DESC, state = 'closed' DESC, "
        "step_last DESC) = 1 ORDER BY step_detected DESC, run_id, metric",
        params,
    )


def monitored_runs(store: Store, run_ids: Sequence[str] | None = None) -> set[str]:
    """Runs whose findings a live monitor (the watcher, or the collector inline) keeps in the store:
    they have a ``monitor`` event, written when it took the run on."""
    where, params = _run_filter(run_ids)
    cond = where.replace("WHERE", "AND") if where else ""
    rows = store.sql(f"SELECT DISTINCT run_id FROM events WHERE kind = 'monitor' {cond}", params)
    return set(rows.column("run_id").to_pylist())


def histogram_matrix(store: Store, run_id: str, name: str = "log_ratio") -> pa.Table:
    """One run's histogram counts per (step, bin), summed over ranks: the tokens heatmap's data."""
    return store.sql(
        "SELECT step, bin, min(lo) AS lo, max(hi) AS hi, CAST(sum(count) AS BIGINT) AS count FROM histograms "
        "WHERE run_id = ? AND name = ? GROUP BY step, bin ORDER BY step, bin",
        [run_id, name],
    )


def worst_tokens(store: Store, run_id: str, step: int | None = None, limit: int = 50) -> pa.Table:
    """The tokens with the largest |trainer - rollout| log-ratio (of one step, or of the whole run)."""
    return store.sql(
        "SELECT step, seq_index, position, token_id, token_text, trainer_logprob, rollout_logprob, "
        "log_ratio FROM tokens WHERE run_id = ? AND (? IS NULL OR step = ?) "
        "ORDER BY abs(log_ratio) DESC NULLS FIRST, step, seq_index, position LIMIT ?",
        [run_id, step, step, int(limit)],
    )


def step_metrics(store: Store, run_id: str, prefixes: Sequence[str], names: Sequence[str] = ()) -> pa.Table:
    """One run's metrics whose names start with one of ``prefixes`` (or are in ``names``): one row
    per metric with its ``steps`` and ``values`` as lists in step order, a step's value the mean over
    ranks and sources. One row per metric keeps a million-step run's read to a few arrays (no
    Python object per point). What the diagnosis reads."""
    starts = "".join(" OR starts_with(name, ?)" for _ in prefixes)
    return store.sql(
        "WITH per_step AS (SELECT name, step, avg(value) AS value FROM metrics WHERE run_id = ? "
        f"AND step IS NOT NULL AND (name IN (SELECT unnest(?)){starts}) GROUP BY name, step) "
        "SELECT name, list(step ORDER BY step) AS steps, list(value ORDER BY step) AS values "
        "FROM per_step GROUP BY name ORDER BY name",
        [run_id, list(names), *prefixes],
    )


def version_gaps(store: Store, run_id: str) -> pa.Table:
    """Per step, the largest shortfall of the engine's own weight version behind the version the
    trainer recorded for the rollout, over the sampled sequences that carry both (negative: the
    engine served older weights than the trainer believed)."""
    return store.sql(
        "SELECT step, min(weight_version - rollout_version) AS gap FROM sequences WHERE run_id = ? "
        "AND weight_version IS NOT NULL AND rollout_version IS NOT NULL GROUP BY step ORDER BY step",
        [run_id],
    )


def sequences(store: Store, run_id: str, step: int | None = None, limit: int = 200) -> pa.Table:
    """Sampled whole sequences of a run (of one step, or the latest ``limit``), newest step first."""
    return store.sql(
        "SELECT step, policy_version, seq_index, reason, prompt_len, rollout_version, weight_version, "
        "token_ids, trainer_logprobs, rollout_logprobs FROM sequences WHERE run_id = ? AND "
        "(? IS NULL OR step = ?) ORDER BY step DESC, reason, seq_index LIMIT ?",
        [run_id, step, step, limit],
    )
