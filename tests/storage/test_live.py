"""LiveSeries: the dashboard's incremental chart data agrees with a full query, and reads only new files."""

from __future__ import annotations

from pathlib import Path

from logprobe import storage
from logprobe.storage import LiveSeries, Store, Writer


def _log(root: Path, steps: range, value=lambda s: float(s % 7), rank: int = 0) -> None:
    with Writer(root) as writer:
        for step in steps:
            writer.log_metrics("r", step, {"a": value(step), "b": 1.0}, rank=rank)


def test_incremental_refresh_reads_only_new_rows_and_keeps_extremes(tmp_path: Path) -> None:
    _log(tmp_path, range(5000))
    store = Store(tmp_path)
    live = LiveSeries(["r"], ["a"], max_points=100)
    assert live.update(store) and live.full_loads == 1
    assert not live.update(store)  # nothing new: no work
    _log(tmp_path, range(5000, 5300), value=lambda s: 1e6 if s == 5123 else float(s % 7))
    assert live.update(store)
    assert live.full_loads == 1 and live.rows_read == 300  # only the new file's rows of "a"
    series = live.table().to_pylist()
    assert len(series) <= 200
    assert sum(b["count"] for b in series) == 5300
    assert max(b["max"] for b in series) == 1e6
    assert series[-1]["x"] == 5299 and series[-1]["last"] == float(5299 % 7)
    xs = [b["x"] for b in series]
    assert xs == sorted(xs)


def test_late_rows_for_old_steps_are_not_missed(tmp_path: Path) -> None:
    _log(tmp_path, range(100))
    store = Store(tmp_path)
    live = LiveSeries(["r"], ["a"], max_points=1000)
    live.update(store)
    _log(tmp_path, range(10, 12), value=lambda s: -50.0, rank=3)  # a lagging rank, older steps
    live.update(store)
    series = live.table().to_pylist()
    assert sum(b["count"] for b in series) == 102
    assert min(b["min"] for b in series) == -50.0
    assert [b["x"] for b in series] == sorted(b["x"] for b in series)


def test_compaction_forces_a_clean_reload_without_double_counting(tmp_path: Path) -> None:
    _log(tmp_path, range(50))
    _log(tmp_path, range(50, 80))
    store = Store(tmp_path)
    live = LiveSeries(["r"], ["a", "b"], max_points=1000)
    live.update(store)
    storage.compact(tmp_path)
    assert live.update(store) and live.full_loads == 2
    full = storage.metric_series(store, ["r"], ["a", "b"], max_points=1000)
    assert (
        live.table()
        .select(["run_id", "name", "x", "min", "max", "last", "count"])
        .equals(full.select(["run_id", "name", "x", "min", "max", "last", "count"]))
    )
