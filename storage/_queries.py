"""The read queries the CLI, the dashboard and the monitor share.

All of them run inside DuckDB over the files (no Python loops over rows) and return pyarrow Tables.
Downsampling keeps min, max and last per bucket, never a random sample, so a spike survives any zoom.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa

from storage._store import Store

DEFAULT_MAX_POINTS = 1000
DEFAULT_STALE_AFTER_S = 300.0
X_AXES = {"step": "step", "policy_version": "policy_version", "time": "epoch(ts)"}


def list_runs(store: Store, *, stale_after_s: float = DEFAULT_STALE_AFTER_S) -> pa.Table:
    """One row per run: identity, last step, last write (and its age in seconds), points and status.

    Status is ``finished`` when every process that started the run has closed it, ``live`` when
    something was written within ``stale_after_s`` seconds, ``stale`` otherwise.
    """
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
        m AS (SELECT run_id, max(step) AS last_step, max(ts) AS last_metric_ts, count(*) AS points
              FROM metrics GROUP BY run_id),
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

    A series with no more points than that comes back unreduced (one bucket per x value; several
    rows at one x, e.g. from several ranks, share a bucket). Columns: run_id, name, x (the x of the
    bucket's last point), x_first, x_last, min, max, last, mean, count.
    """
    if x not in X_AXES:
        raise ValueError(f"unknown x axis {x!r}; choose one of {', '.join(X_AXES)}")
    if max_points < 1:
        raise ValueError(f"max_points must be >= 1, got {max_points}")
    if not run_ids or not names:
        return store.sql(_EMPTY_SERIES)
    x_expr = X_AXES[x]
    bounds = ""
    params: list = [list(run_ids), list(names)]
    if x_min is not None:
        bounds += " AND x >= ?"
        params.append(float(x_min))
    if x_max is not None:
        bounds += " AND x <= ?"
        params.append(float(x_max))
    params.append(max_points)
    return store.sql(
        f"""
        WITH s AS (
            SELECT run_id, name, CAST({x_expr} AS DOUBLE) AS x, value, step, ts
            FROM metrics WHERE run_id IN (SELECT unnest(?)) AND name IN (SELECT unnest(?))),
        f AS (SELECT * FROM s WHERE x IS NOT NULL {bounds}),
        span AS (SELECT run_id, name, min(x) AS lo, max(x) AS hi, count(DISTINCT x) AS nx
                 FROM f GROUP BY run_id, name),
        n AS (SELECT ? AS n)
        SELECT f.run_id, f.name,
               max(f.x) AS x, min(f.x) AS x_first, max(f.x) AS x_last,
               min(value) AS min, max(value) AS max, arg_max(value, (f.x, f.ts)) AS last,
               avg(value) AS mean, count(*) AS count
        FROM f JOIN span USING (run_id, name), n
        GROUP BY f.run_id, f.name,
                 CASE WHEN span.nx <= n.n THEN f.x
                      ELSE least(floor((f.x - span.lo) * n.n / (span.hi - span.lo)), n.n - 1) END
        ORDER BY f.run_id, f.name, x
        """,
        params,
    )


_EMPTY_SERIES = """
    SELECT NULL::VARCHAR AS run_id, NULL::VARCHAR AS name, NULL::DOUBLE AS x, NULL::DOUBLE AS x_first,
           NULL::DOUBLE AS x_last, NULL::DOUBLE AS min, NULL::DOUBLE AS max, NULL::DOUBLE AS last,
           NULL::DOUBLE AS mean, NULL::BIGINT AS count WHERE false
"""


def metrics_after(
    store: Store, run_id: str, after_step: int | None, names: Sequence[str] | None = None
) -> pa.Table:
    """Raw metric rows of one run with ``step > after_step`` (all rows when None), in step order.

    This is the live view's incremental fetch: it asks only for what it has not seen.
    """
    params: list = [run_id, -(2**63) if after_step is None else int(after_step)]
    name_filter = ""
    if names is not None:
        name_filter = " AND name IN (SELECT unnest(?))"
        params.append(list(names))
    return store.sql(
        "SELECT step, policy_version, ts, source, rank, worker, name, value FROM metrics "
        f"WHERE run_id = ? AND step > ?{name_filter} ORDER BY step, ts",
        params,
    )


def engines(store: Store, run_ids: Sequence[str] | None = None) -> pa.Table:
    """The engine configurations seen per run, oldest first."""
    where, params = _run_filter(run_ids)
    return store.sql(f"SELECT * FROM engines {where} ORDER BY run_id, ts", params)


def _run_filter(run_ids: Sequence[str] | None) -> tuple[str, list]:
    if run_ids is None:
        return "", []
    return "WHERE run_id IN (SELECT unnest(?))", [list(run_ids)]
