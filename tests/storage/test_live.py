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


def _two_files_charted(root: Path, split: int, end: int, store: Store) -> LiveSeries:
    """Two flushes (steps below ``split``, then up to ``end``) and a chart of both metrics loaded
    over them: the state a refresh after a compaction starts from."""
    _log(root, range(split))
    _log(root, range(split, end))
    live = LiveSeries(["r"], ["a", "b"], max_points=1000)
    live.update(store)
    return live


def test_compaction_forces_a_clean_reload_without_double_counting(tmp_path: Path) -> None:
    store = Store(tmp_path)
    live = _two_files_charted(tmp_path, 50, 80, store)
    storage.compact(tmp_path)
    assert live.update(store) and live.full_loads == 2
    _same_as_a_full_query(live, store, ["a", "b"])


class CompactingStore(Store):
    """A real Store over a real root whose file listing is followed, ``pending`` times, by a writer
    flushing one more file and a real compaction of the root: the compaction lands after a reader
    listed its files and before DuckDB opens them, the window a live dashboard hits when
    `logprobe compact --every` runs beside it."""

    pending = 0
    merged = 0
    next_step = 10_000  # the rows the seam writes itself, past the test's own steps

    def files(self, table: str) -> list[str]:
        listed = super().files(table)
        if self.pending and table == "metrics":
            self.pending -= 1
            _log(self.location, range(self.next_step, self.next_step + 3), rank=2)
            self.next_step += 3
            self.merged += storage.compact(self.location).files_merged
        return listed


def _same_as_a_full_query(live: LiveSeries, store: Store, names: list[str]) -> None:
    full = storage.metric_series(store, ["r"], names, max_points=1000)
    cols = ["run_id", "name", "x", "min", "max", "last", "count"]
    assert live.table().select(cols).equals(full.select(cols))


def test_compactions_between_listing_and_query_never_reach_the_chart(tmp_path: Path) -> None:
    store = CompactingStore(tmp_path)
    live = _two_files_charted(tmp_path, 20, 40, store)
    for round_ in range(6):
        start = 40 + 30 * round_
        _log(tmp_path, range(start, start + 15))
        _log(tmp_path, range(start + 15, start + 30), rank=1)
        merged, store.pending = store.merged, 1 + round_ % 2  # once, or again during the retry
        assert live.update(store)  # must not raise: the retry picks the files that exist now
        assert store.pending == 0 and store.merged > merged
        live.update(store)  # the seam's last file, if the update's final listing came before it
        _same_as_a_full_query(live, store, ["a", "b"])
    written = 220 + (store.next_step - 10_000)
    assert sum(b["count"] for b in live.table().to_pylist() if b["name"] == "a") == written


def test_a_compaction_loop_beside_a_live_chart(tmp_path: Path) -> None:
    """The same race left to the scheduler: a thread compacts as fast as it can while a writer
    appends and the chart refreshes; no refresh may fail and the chart ends equal to the store."""
    import threading

    _log(tmp_path, range(10))
    stop = threading.Event()
    errors: list[BaseException] = []

    def compact_loop() -> None:
        while not stop.is_set():
            try:
                storage.compact(tmp_path)
            except BaseException as exc:  # reported by the assertion below
                errors.append(exc)

    thread = threading.Thread(target=compact_loop, daemon=True)
    thread.start()
    store = Store(tmp_path)
    live = LiveSeries(["r"], ["a"], max_points=1000)
    try:
        for step in range(10, 210, 5):
            _log(tmp_path, range(step, step + 5))
            live.update(store)
    finally:
        stop.set()
        thread.join(30)
    assert not errors, errors
    live.update(store)
    _same_as_a_full_query(live, store, ["a"])
    assert sum(b["count"] for b in live.table().to_pylist()) == 210
