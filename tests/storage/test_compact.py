"""Compaction: fewer files, same rows, safe beside live readers and writers, and after a crash."""

from __future__ import annotations

import fcntl
import os
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from logprobe import storage
from logprobe.storage import Store, Writer


def _many_files(root: Path, run_id: str = "r", files: int = 6, steps_per_file: int = 10) -> None:
    for f in range(files):
        with Writer(root) as writer:
            for s in range(steps_per_file):
                step = f * steps_per_file + s
                writer.log_metrics(run_id, step, {"a": float(step), "b": -float(step)})


def _metric_files(root: Path, run_id: str = "r") -> list[Path]:
    return sorted((root / "metrics" / f"run_id={run_id}").glob("*.parquet"))


def test_compaction_merges_into_one_file_with_the_same_rows(tmp_path: Path) -> None:
    _many_files(tmp_path)
    reader = Store(tmp_path)  # a reader whose views point at the files about to go
    before = reader.sql("SELECT step, name, value FROM metrics ORDER BY ALL").to_pylist()
    report = storage.compact(tmp_path)
    assert report.files_merged == 6 and report.files_written == 1 and report.rows == 120
    files = _metric_files(tmp_path)
    assert len(files) == 1 and files[0].name.startswith("compact-")
    assert reader.sql("SELECT step, name, value FROM metrics ORDER BY ALL").to_pylist() == before
    assert Store(tmp_path).sql("SELECT step, name, value FROM metrics ORDER BY ALL").to_pylist() == before
    again = storage.compact(tmp_path)
    assert again.files_written == 0  # nothing left to merge


def test_compaction_killed_before_deleting_leaves_no_duplicates(tmp_path: Path) -> None:
    _many_files(tmp_path)
    originals = {p.name: p.read_bytes() for p in _metric_files(tmp_path)}
    storage.compact(tmp_path)
    # Put the originals back: exactly the state of a compaction killed after its rename.
    for name, data in originals.items():
        (tmp_path / "metrics" / "run_id=r" / name).write_bytes(data)
    store = Store(tmp_path)
    assert store.sql("SELECT count(*) FROM metrics")[0][0].as_py() == 120
    assert store.sql("SELECT count(*) FROM (SELECT DISTINCT step, name FROM metrics)")[0][0].as_py() == 120
    report = storage.compact(tmp_path)
    assert report.leftovers_removed == 6
    assert len(_metric_files(tmp_path)) == 1


def test_compaction_beside_a_live_writer_and_reader(tmp_path: Path) -> None:
    writer = Writer(tmp_path, flush_interval=0.01)
    total = 4000
    done = threading.Event()

    def produce() -> None:
        for step in range(total):
            writer.log_metrics("r", step, {"a": float(step)})
            if step % 100 == 0:
                writer.flush()
                time.sleep(0.01)
        writer.close()
        done.set()

    thread = threading.Thread(target=produce)
    thread.start()
    reader = Store(tmp_path)
    compactions = 0
    while not done.is_set():
        storage.compact(tmp_path, min_files=2)
        compactions += 1
        reader.refresh()
        n = reader.sql("SELECT count(*) AS n, count(DISTINCT step) AS d FROM metrics").to_pylist()[0]
        assert n["n"] == n["d"], "a reader saw a row twice"
    thread.join()
    storage.compact(tmp_path)
    final = Store(tmp_path).sql("SELECT count(*) AS n, count(DISTINCT step) AS d FROM metrics")
    assert final.to_pylist()[0] == {"n": total, "d": total}
    assert compactions >= 2


def test_unreadable_files_are_left_alone_and_reported(tmp_path: Path) -> None:
    _many_files(tmp_path, files=3)
    bad = tmp_path / "metrics" / "run_id=r" / "junk-00000009.parquet"
    bad.write_bytes(b"garbage")
    report = storage.compact(tmp_path)
    assert str(bad) in report.bad_files and bad.exists()
    assert Store(tmp_path).sql("SELECT count(*) FROM metrics")[0][0].as_py() == 60


def test_a_partition_being_compacted_elsewhere_is_skipped(tmp_path: Path) -> None:
    _many_files(tmp_path, files=3)
    part = tmp_path / "metrics" / "run_id=r"
    fd = os.open(part / ".compact.lock", os.O_CREAT | os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        report = storage.compact(tmp_path, tables=("metrics",))
    finally:
        os.close(fd)
    assert report.skipped_locked == 1 and len(_metric_files(tmp_path)) == 3


def test_compaction_keeps_columns_from_old_and_new_files(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    _many_files(tmp_path, files=2)
    part = tmp_path / "metrics" / "run_id=r"
    pq.write_table(
        pa.table({"step": [99], "name": ["a"], "value": [9.0], "node": ["n"]}),
        part / "newer-00000000.parquet",
    )
    storage.compact(tmp_path)
    rows = Store(tmp_path).sql("SELECT node FROM metrics WHERE step = 99").to_pylist()
    assert rows == [{"node": "n"}]


def test_a_partition_larger_than_the_memory_limit_merges_by_spilling(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Four files of 1M metric rows each, steps interleaved across files, merged under a 64 MB
    DuckDB memory limit: the sort spills to disk and the result is whole and in step order."""
    import logprobe.storage._compact as compact_module

    partition = tmp_path / "metrics" / "run_id=big"
    partition.mkdir(parents=True)
    n = 1_000_000
    for i in range(4):
        steps = np.arange(n, dtype=np.int64) * 4 + (3 - i)  # file i holds steps = 3 - i (mod 4)
        table = pa.table(
            {
                "step": steps,
                "ts": pa.array(np.full(n, 1_700_000_000_000_000, dtype=np.int64), pa.timestamp("us", "UTC")),
                "name": pa.array(["loss"] * n),
                "value": np.random.default_rng(i).random(n),
            }
        )
        pq.write_table(table, partition / f"w{i}-00000000.parquet")
    monkeypatch.setattr(compact_module, "default_memory_limit", lambda: "64MB")
    report = storage.compact(tmp_path)
    assert report.files_merged == 4 and report.rows == 4 * n
    (merged,) = list(partition.glob("*.parquet"))
    steps = pq.read_table(merged, columns=["step"]).column("step").to_numpy()
    assert np.array_equal(steps, np.arange(4 * n))
    with Store(tmp_path) as store:
        total = store.sql("SELECT count(*) AS n, sum(step) AS s FROM metrics").to_pylist()[0]
    assert total == {"n": 4 * n, "s": int(np.arange(4 * n).sum())}
