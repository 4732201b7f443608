"""The read queries the CLI, the dashboard and the monitor share.

All of them run inside DuckDB over the files (no Python loops over rows) and return pyarrow Tables.
Downsampling keeps min, max and last per bucket, never a random sample, so a spike survives any zoom.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

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
              FROM metric_summary),
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
        tables={"metric_summary": store.run_summary("metrics")},
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


# Reads over chosen files rather than a view: ``pick`` chooses them from the table's current list
# and is called again if a compaction moves files under the query (``Store.sql_over_files``).
FilePick = Callable[[list[str]], Iterable[str]]


def metric_rows(
    store: Store, run_id: str, pick: FilePick | None = None, after: int | None = None
) -> pa.Table:
    """A run's metric rows as (name, step, value) in file order; only from the files ``pick``
    chooses (a tick reads what is new) and past step ``after`` when given. Neither grouped nor
    sorted here: sorting 20M rows by a text key is most of a scan's cost in DuckDB, and the
    monitor's ``feed`` does it on integer codes."""
    query = "SELECT name, step, value FROM {source} WHERE run_id = ? AND step > ?"
    params = [run_id, -(2**63) if after is None else after]
    if pick is None:
        return store.sql(query.replace("{source}", "metrics"), params)
    return store.sql_over_files("metrics", pick, query, params)


def rows_past_cursors(store: Store, pick: FilePick, cursors: dict[str, int]) -> pa.Table:
    """Per (run, step, metric) the mean value, from the picked files, past each run's cursor step
    (every step of a run without one): what the store watcher has not judged yet."""
    return store.sql_over_files(
        "metrics",
        pick,
        "WITH c AS (SELECT unnest(?) AS run_id, unnest(?) AS after) "
        "SELECT m.run_id, m.step, m.name, avg(m.value) AS value FROM {source} m "
        "LEFT JOIN c USING (run_id) WHERE m.step > coalesce(c.after, -9223372036854775808) "
        "GROUP BY ALL",
        [list(cursors), list(cursors.values())],
    )


def series_rows(store: Store, pick: FilePick, names: Sequence[str], x: str = "step") -> pa.Table:
    """Raw (run_id, name, x, value) points of ``names`` from the picked files, sorted for a chart
    (``LiveSeries`` adds only new files' points to its buckets)."""
    column = X_AXES[x]
    return store.sql_over_files(
        "metrics",
        pick,
        f"SELECT run_id, name, CAST({column} AS DOUBLE) AS x, value FROM {{source}} "
        f"WHERE name IN (SELECT unnest(?)) AND {column} IS NOT NULL ORDER BY run_id, name, x, ts",
        [list(names)],
    )


def metric_quantile(store: Store, run_id: str, name: str, quantile: float) -> float | None:
    """A quantile of one metric over a run (None without values)."""
    row = store.sql(
        "SELECT quantile_cont(value, ?) AS level FROM metrics WHERE run_id = ? AND name = ?",
        [quantile, run_id, name],
    ).to_pylist()
    return row[0]["level"] if row else None


def aligned_steps(store: Store, ref: str, run: str, name: str) -> pa.Table:
    """(step, ref, run): per-step means of ``name`` in two runs, on the steps both logged."""
    per_step = "SELECT step, avg(value) AS v FROM metrics WHERE run_id = ? AND name = ? GROUP BY step"
    return store.sql(
        f"WITH a AS ({per_step}), b AS ({per_step}) "
        "SELECT a.step, a.v AS ref, b.v AS run FROM a JOIN b USING (step) ORDER BY a.step",
        [ref, name, run, name],
    )


def reference_run(store: Store, run_id: str) -> str | None:
    """The reference run recorded for ``run_id`` (``logprobe.init(reference=...)``), if any."""
    row = store.sql(
        "SELECT max(reference_run) AS ref FROM runs WHERE run_id = ? AND reference_run IS NOT NULL "
        "AND reference_run <> run_id",
        [run_id],
    ).to_pylist()
    return row[0]["ref"] if row else None


def token_steps(store: Store, run_id: str) -> list[int]:
    """The steps at which a run logged per-token rows, in order."""
    rows = store.sql(
        "SELECT DISTINCT step FROM tokens WHERE run_id = ? AND step IS NOT NULL ORDER BY step", [run_id]
    )
    return rows.column("step").to_pylist()


def run_record(store: Store, run_id: str) -> dict | None:
    """The ``runs`` row of a run (its first, if it started more than once); None if unknown."""
    rows = store.sql("SELECT * FROM runs WHERE run_id = ? ORDER BY created_at LIMIT 1", [run_id]).to_pylist()
    return rows[0] if rows else None


def replayable_sequences(store: Store, run_id: str) -> list[dict]:
    """Every logged whole sequence of a run that kept its prompt (what a replay re-scores), in
    step and sequence order."""
    return store.sql(
        "SELECT step, seq_index, reason, rollout_version, prompt_ids, token_ids, rollout_logprobs, "
        "trainer_logprobs FROM sequences WHERE run_id = ? AND prompt_ids IS NOT NULL "
        "ORDER BY step, seq_index",
        [run_id],
    ).to_pylist()


def first_rollout_version(store: Store, run_id: str, from_step: int) -> int | None:
    """The oldest policy version among a run's logged sequences from ``from_step`` on."""
    return store.sql(
        "SELECT min(rollout_version) FROM sequences WHERE run_id = ? AND step >= ?", [run_id, from_step]
    )[0][0].as_py()
