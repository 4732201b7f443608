"""The DuckDB views: empty roots, schema evolution, corrupt files, queries, downsampling."""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from logprobe import storage
from logprobe.storage import Store, Writer


def _write_run(root: Path, run_id: str, steps: int, names: list[str], **kw) -> None:
    with Writer(root) as writer:
        writer.append("runs", run_id, {"name": run_id, "created_at": time.time()})
        writer.append("events", run_id, {"kind": "run_start"})
        for step in range(steps):
            writer.log_metrics(run_id, step, {n: float(step * (i + 1)) for i, n in enumerate(names)}, **kw)


def test_empty_root_has_typed_empty_tables(tmp_path: Path) -> None:
    store = Store(tmp_path / "does-not-exist-yet")
    for table in storage.TABLES:
        assert store.sql(f"SELECT count(*) FROM {table}")[0][0].as_py() == 0
    cols = dict(store.con.sql("DESCRIBE metrics").fetchall()[i][:2] for i in range(9))
    assert cols["value"] == "DOUBLE" and cols["step"] == "BIGINT" and cols["run_id"] == "VARCHAR"
    assert storage.list_runs(store).num_rows == 0
    assert storage.metric_series(store, ["x"], ["y"]).num_rows == 0


def test_table_with_no_files_next_to_tables_with_files(tmp_path: Path) -> None:
    _write_run(tmp_path, "r1", 3, ["a"])
    store = Store(tmp_path)
    assert store.sql("SELECT count(*) FROM metrics")[0][0].as_py() == 3
    assert store.sql("SELECT count(*) FROM alerts")[0][0].as_py() == 0


def test_numeric_looking_run_ids_stay_strings(tmp_path: Path) -> None:
    _write_run(tmp_path, "007", 2, ["a"])
    assert Store(tmp_path).sql("SELECT DISTINCT run_id FROM metrics")[0][0].as_py() == "007"


def test_files_with_different_columns_union_by_name(tmp_path: Path) -> None:
    _write_run(tmp_path, "r", 2, ["a"])
    part = tmp_path / "metrics" / "run_id=r"
    # An older writer without policy_version/worker, and a newer one with an extra column.
    pq.write_table(pa.table({"step": [10], "name": ["a"], "value": [1.5]}), part / "old-00000000.parquet")
    pq.write_table(
        pa.table({"step": [11], "name": ["a"], "value": [2.5], "node": ["n1"]}), part / "new-00000000.parquet"
    )
    store = Store(tmp_path)
    rows = store.sql("SELECT step, value, policy_version, node FROM metrics ORDER BY step").to_pylist()
    assert [r["step"] for r in rows] == [0, 1, 10, 11]
    assert rows[-1]["node"] == "n1" and rows[2]["node"] is None and rows[2]["policy_version"] is None


def test_corrupt_and_truncated_files_are_skipped_and_named(tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.WARNING)
    _write_run(tmp_path, "r", 5, ["a", "b"])
    part = tmp_path / "metrics" / "run_id=r"
    good = next(part.glob("*.parquet"))
    (part / "junk-00000001.parquet").write_bytes(b"PAR1 this is not parquet at all")
    data = good.read_bytes()
    (part / "cut-00000002.parquet").write_bytes(data[: len(data) // 2])
    (part / "empty-00000003.parquet").write_bytes(b"")
    store = Store(tmp_path)
    assert store.sql("SELECT count(*) FROM metrics")[0][0].as_py() == 10
    bad = {Path(p).name for p in store.sql("SELECT path FROM bad_files").column(0).to_pylist()}
    assert bad == {"junk-00000001.parquet", "cut-00000002.parquet", "empty-00000003.parquet"}
    for name in bad:
        assert name in caplog.text
    # the plain-connection entry point reports them the same way
    con = storage.connect(tmp_path)
    assert con.execute("SELECT count(*) FROM bad_files").fetchone()[0] == 3


def test_refresh_follows_new_files_and_reports_changes(tmp_path: Path) -> None:
    store = Store(tmp_path)
    assert store.refresh() is False
    _write_run(tmp_path, "r", 4, ["a"])
    assert store.refresh() is True
    assert store.sql("SELECT count(*) FROM metrics")[0][0].as_py() == 4
    assert store.refresh() is False


def test_list_runs_status_and_last_step(tmp_path: Path) -> None:
    _write_run(tmp_path, "done", 7, ["a"])
    with Writer(tmp_path) as writer:
        writer.append("events", "done", {"kind": "run_end"})
    with Writer(tmp_path) as writer:  # started, still going
        writer.append("runs", "going", {"name": "going", "created_at": time.time()})
        writer.append("events", "going", {"kind": "run_start"})
        writer.log_metrics("going", 3, {"a": 1.0})
    with Writer(tmp_path) as writer:  # silent for an hour
        hour_ago = time.time() - 3600
        writer.append("runs", "old", {"name": "old", "created_at": hour_ago})
        writer.append("events", "old", {"kind": "run_start", "ts": hour_ago})
        writer.log_metrics("old", 1, {"a": 1.0}, ts=hour_ago)
    runs = {r["run_id"]: r for r in storage.list_runs(Store(tmp_path)).to_pylist()}
    assert runs["done"]["status"] == "finished" and runs["done"]["last_step"] == 6
    assert runs["going"]["status"] == "live" and runs["going"]["points"] == 1
    assert runs["old"]["status"] == "stale"


def test_metric_series_downsamples_keeping_min_max_last(tmp_path: Path) -> None:
    with Writer(tmp_path) as writer:
        for step in range(10_000):
            value = 1000.0 if step == 4321 else -1000.0 if step == 777 else float(step % 10)
            writer.log_metrics("r", step, {"m": value, "other": 1.0})
    store = Store(tmp_path)
    series = storage.metric_series(store, ["r"], ["m"], max_points=100).to_pylist()
    assert len(series) == 100
    assert sum(b["count"] for b in series) == 10_000
    assert max(b["max"] for b in series) == 1000.0 and min(b["min"] for b in series) == -1000.0
    spike = next(b for b in series if b["max"] == 1000.0)
    assert spike["x_first"] <= 4321 <= spike["x_last"]
    assert series[-1]["last"] == float(9999 % 10) and series[-1]["x"] == 9999
    xs = [b["x"] for b in series]
    assert xs == sorted(xs)


def test_metric_series_short_series_come_back_raw(tmp_path: Path) -> None:
    _write_run(tmp_path, "r", 50, ["a"])
    series = storage.metric_series(Store(tmp_path), ["r"], ["a"], max_points=100).to_pylist()
    assert [b["x"] for b in series] == [float(s) for s in range(50)]
    assert all(b["count"] == 1 and b["min"] == b["max"] == b["last"] for b in series)


def test_metric_series_x_axes_and_range(tmp_path: Path) -> None:
    with Writer(tmp_path) as writer:
        for step in range(100):
            writer.log_metrics("r", step, {"a": float(step)}, policy_version=step // 10, ts=1e9 + step)
    store = Store(tmp_path)
    by_version = storage.metric_series(store, ["r"], ["a"], x="policy_version").to_pylist()
    assert [b["x"] for b in by_version] == [float(v) for v in range(10)]
    assert by_version[0]["min"] == 0 and by_version[0]["max"] == 9 and by_version[0]["last"] == 9
    by_time = storage.metric_series(store, ["r"], ["a"], x="time", x_min=1e9 + 10, x_max=1e9 + 19)
    assert by_time.column("last").to_pylist() == [float(s) for s in range(10, 20)]
    with pytest.raises(ValueError, match="unknown x axis"):
        storage.metric_series(store, ["r"], ["a"], x="wall")


def test_engines_and_metric_names(tmp_path: Path) -> None:
    _write_run(tmp_path, "r", 2, ["b", "a"])
    with Writer(tmp_path) as writer:
        writer.append(
            "engines",
            "r",
            {
                "vllm_version": "0.32.0",
                "logprobs_mode": "raw_logprobs",
                "enable_prefix_caching": True,
                "flags": "{}",
                "fingerprint": "f",
            },
        )
    store = Store(tmp_path)
    assert storage.metric_names(store, ["r"]) == ["a", "b"]
    row = storage.engines(store, ["r"]).to_pylist()[0]
    assert row["vllm_version"] == "0.32.0" and row["enable_prefix_caching"] is True


def test_sql_retries_after_files_vanish(tmp_path: Path) -> None:
    _write_run(tmp_path, "r", 5, ["a"])
    store = Store(tmp_path)
    part = tmp_path / "metrics" / "run_id=r"
    moved = tmp_path / "moved"
    shutil.move(part, moved)  # files gone under a live reader (as after a compaction)
    _write_run(tmp_path, "r", 3, ["a"])
    assert store.sql("SELECT count(*) FROM metrics")[0][0].as_py() == 3


def test_metric_series_uses_footer_ranges_and_rebuckets_a_metric_added_late(tmp_path: Path) -> None:
    with Writer(tmp_path) as writer:
        for step in range(20_000):
            metrics = {"early": 1.0}
            if step >= 19_800:  # added in the last 1% of the run
                metrics["late"] = float(step)
            writer.log_metrics("r", step, metrics)
    store = Store(tmp_path)
    assert store.column_range("metrics", "r", "step") == (0.0, 19_999.0)
    assert store.column_range("metrics", "nope", "step") is None
    series = storage.metric_series(store, ["r"], ["early", "late"], max_points=100).to_pylist()
    early = [b for b in series if b["name"] == "early"]
    late = [b for b in series if b["name"] == "late"]
    assert len(early) == 100 and sum(b["count"] for b in early) == 20_000
    assert len(late) == 100 and sum(b["count"] for b in late) == 200  # not 1 bucket of the run's range
    assert late[-1]["last"] == 19_999.0 and late[0]["x_first"] == 19_800.0


def test_a_console_query_past_its_time_limit_stops_with_a_clear_error(tmp_path: Path) -> None:
    store = Store(tmp_path, confined=True)
    started = time.monotonic()
    with pytest.raises(storage.QueryError, match=r"stopped after the 0.5 s time limit"):
        store.read_only_query("SELECT sum(i * i % 7) FROM range(10000000000000) t(i)", timeout_s=0.5)
    assert time.monotonic() - started < 10
    # The connection is fine afterwards: the interrupt does not leak into the next query.
    assert store.read_only_query("SELECT 42 AS x", timeout_s=0.5).to_pylist() == [{"x": 42}]
    with pytest.raises(ValueError, match="timeout_s must be > 0"):
        store.read_only_query("SELECT 1", timeout_s=0)


def test_a_confined_query_that_needs_too_much_memory_fails_instead_of_taking_the_node(tmp_path: Path) -> None:
    store = Store(tmp_path, confined=True, memory_limit="64MB")
    with pytest.raises(duckdb.OutOfMemoryException):
        store.read_only_query("SELECT list(i) FROM range(100000000) t(i)", timeout_s=60)
    assert store.read_only_query("SELECT 1 AS x").to_pylist() == [{"x": 1}]
    default = Store(tmp_path, confined=True).read_only_query("SELECT current_setting('memory_limit') AS m")
    # Unless given, a quarter of the machine's memory, at most 4 GiB (DuckDB's default is 80%).
    total_mib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
    expected = duckdb.connect()
    expected.execute("SET memory_limit = ?", [f"{max(256, min(4096, total_mib // 4))}MiB"])
    want = expected.sql("SELECT current_setting('memory_limit')").fetchall()[0][0]
    assert default.column("m")[0].as_py() == want


def test_the_run_list_reads_footers_and_agrees_with_a_scan(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    with Writer(tmp_path, flush_interval=60) as writer:
        for run in ("a", "b", "c"):
            for step in range(int(rng.integers(5, 40))):
                writer.log_metrics(run, step, {"x": 1.0, "y": 2.0}, ts=1_790_000_000.123457 + step * 0.5)
                if step % 7 == 0:
                    writer.flush()  # several files per run
    # A file written without statistics (another tool, an old writer): the run list scans it.
    table = pa.table(
        {
            "step": pa.array([100, 101], pa.int64()),
            "ts": pa.array([1_790_000_999_000_001, 1_790_000_999_000_002], pa.timestamp("us", "UTC")),
            "name": ["x", "x"],
            "value": [0.5, 0.6],
        }
    )
    (tmp_path / "metrics" / "run_id=b").mkdir(parents=True, exist_ok=True)
    pq.write_table(
        table, tmp_path / "metrics" / "run_id=b" / "other-00000000.parquet", write_statistics=False
    )
    store = Store(tmp_path)
    assert any("ts" not in f.ranges for f in store._snapshot.files["metrics"])
    listed = {
        r["run_id"]: (r["last_step"], r["points"], r["last_write"])
        for r in storage.list_runs(store).to_pylist()
    }
    scanned = {
        r["run_id"]: (r["last_step"], r["points"], r["last_write"])
        for r in store.sql(
            "SELECT run_id, max(step) AS last_step, count(*) AS points, max(ts) AS last_write "
            "FROM metrics GROUP BY run_id"
        ).to_pylist()
    }
    assert listed == scanned
    assert listed["b"][0] == 101


def test_one_store_serves_several_threads(tmp_path: Path) -> None:
    """A dashboard session's Store is called from a rerun's thread while the previous run's thread
    is still inside a query (Streamlit's fast reruns). DuckDB refuses a second call on a busy
    connection ("connection is busy with another call"), so the Store's calls take turns."""
    import threading

    _write_run(tmp_path, "r", 300, ["a", "b", "c"])
    store = Store(tmp_path)
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def session() -> None:
        start.wait()
        try:
            for _ in range(25):
                assert storage.list_runs(store).num_rows == 1
                store.refresh()
                assert store.sql("SELECT count(*) AS n FROM metrics")["n"][0].as_py() == 900
                store.read_only_query("SELECT name, avg(value) FROM metrics GROUP BY name", timeout_s=30)
                store.sql_over_run("metrics", "r", "SELECT max(step) FROM {source}")
        except BaseException as exc:  # reported below, with the thread's own error
            errors.append(exc)

    threads = [threading.Thread(target=session) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors[:3]


def test_a_second_store_over_a_root_reads_only_footers_no_store_has_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The dashboard opens a Store per browser session: a new session must not read every footer
    again (the catalog's cache is shared per root), yet must see new files and forget gone ones."""
    from logprobe.storage import _catalog

    for run_id in ("a", "b", "c"):
        _write_run(tmp_path, run_id, 5, ["m"])
    Store(tmp_path).close()
    read: list[str] = []
    real = _catalog.pq.read_metadata
    monkeypatch.setattr(
        _catalog.pq, "read_metadata", lambda path, *a, **kw: read.append(path) or real(path, *a, **kw)
    )
    with Store(tmp_path) as store:
        assert store.sql("SELECT count(*) FROM metrics")[0][0].as_py() == 15
    assert read == []
    _write_run(tmp_path, "d", 2, ["m"])
    with Store(tmp_path) as store:
        assert store.sql("SELECT count(*) FROM metrics")[0][0].as_py() == 17
    assert {Path(p).parent.name for p in read} == {"run_id=d"}  # only the new run's files
    storage.compact(tmp_path)
    with Store(tmp_path) as store:
        assert store.sql("SELECT count(*) FROM metrics")[0][0].as_py() == 17
        live = {Path(p) for table in storage.TABLES for p in store.files(table)}
    cached = {
        p for p in _catalog._footers_of(os.path.realpath(tmp_path)) if p.parent.parent.parent == tmp_path
    }
    assert cached == live  # the compacted-away files' footers are forgotten
