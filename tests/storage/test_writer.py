"""The Writer: layout, atomic files, never raising into the caller, bounded buffer, resume."""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from logprobe import storage
from logprobe.storage import Store, Writer
from tests.conftest import run_python


def _count(root: Path, sql: str = "SELECT count(*) AS n FROM metrics") -> int:
    return Store(root).sql(sql).column(0)[0].as_py()


def test_files_follow_the_hive_layout_and_no_temp_file_survives(tmp_path: Path) -> None:
    with Writer(tmp_path, writer_id="w1", flush_interval=0.05) as writer:
        for step in range(10):
            writer.log_metrics("run-a", step, {"loss": 1.0 / (step + 1), "reward": step})
        writer.append("events", "run-a", {"kind": "weight_update", "step": 3, "payload": "{}"})
    files = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert files, "nothing was written"
    for rel in files:
        table, partition, name = rel.split("/")
        assert table in storage.TABLES
        assert partition == "run_id=run-a"
        assert name.startswith("w1-") and name.endswith(".parquet"), rel
    assert pq.read_metadata(tmp_path / files[0]).row_group(0).column(0).compression == "ZSTD"
    rows = Store(tmp_path).sql("SELECT step, name, value FROM metrics ORDER BY step, name").to_pylist()
    assert len(rows) == 20
    assert rows[0] == {"step": 0, "name": "loss", "value": 1.0}
    assert rows[-1] == {"step": 9, "name": "reward", "value": 9.0}


def test_background_thread_flushes_without_close(tmp_path: Path) -> None:
    writer = Writer(tmp_path, flush_interval=0.05)
    writer.log_metrics("r", 0, {"x": 1.0})
    deadline = time.time() + 5
    while time.time() < deadline and not list(tmp_path.rglob("*.parquet")):
        time.sleep(0.02)
    assert _count(tmp_path) == 1
    writer.close()


def test_size_trigger_flushes_before_the_interval(tmp_path: Path) -> None:
    writer = Writer(tmp_path, flush_interval=60, flush_rows=100)
    for step in range(30):
        writer.log_metrics("r", step, {f"m{i}": float(i) for i in range(5)})
    deadline = time.time() + 5
    while time.time() < deadline and writer.stats().rows_written < 100:
        time.sleep(0.02)
    assert writer.stats().rows_written >= 100
    writer.close()


def test_numpy_torch_and_bool_values_are_numbers(tmp_path: Path) -> None:
    with Writer(tmp_path) as writer:
        writer.log_metrics(
            "r",
            1,
            {
                "np": np.float32(0.5),
                "npi": np.int64(3),
                "t": torch.tensor(2.5),
                "t1": torch.tensor([4.0]),
                "b": True,
                "i": 7,
            },
        )
    rows = Store(tmp_path).sql("SELECT name, value FROM metrics").to_pylist()
    got = {r["name"]: r["value"] for r in rows}
    assert got == {"np": 0.5, "npi": 3.0, "t": 2.5, "t1": 4.0, "b": 1.0, "i": 7.0}


def test_bad_values_are_skipped_counted_and_recorded_once(tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.WARNING)
    with Writer(tmp_path) as writer:
        for step in range(3):
            writer.log_metrics(
                "r", step, {"ok": 1.0, "text": "high", "none": None, 5: 1.0, "vec": torch.ones(3)}
            )
        stats = writer.stats()
    assert stats.values_invalid == 12
    store = Store(tmp_path)
    assert store.sql("SELECT DISTINCT name FROM metrics").column(0).to_pylist() == ["ok"]
    events = store.sql("SELECT payload FROM events WHERE kind = 'invalid_metric'").column(0).to_pylist()
    assert sorted(json.loads(p)["name"] for p in events) == ["5", "none", "text", "vec"]
    assert sum("skipping metric text" in r.getMessage() for r in caplog.records) == 1


def test_strict_mode_raises_for_tests(tmp_path: Path) -> None:
    writer = Writer(tmp_path, strict=True)
    with pytest.raises(TypeError, match="metric text"):
        writer.log_metrics("r", 0, {"text": "x"})
    writer.close()


def test_invalid_run_id_is_a_clear_error(tmp_path: Path) -> None:
    writer = Writer(tmp_path)
    for bad in ["../escape", "", ".hidden", "a/b", "x" * 300]:
        with pytest.raises(ValueError, match="invalid run_id"):
            writer.log_metrics(bad, 0, {"x": 1.0})
    writer.close()


def test_unwritable_root_never_raises_then_resumes(tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.WARNING)
    root = tmp_path / "root"
    root.mkdir()
    (root / "metrics").write_text("a file where a directory must go")
    writer = Writer(root, flush_interval=0.05)
    for step in range(50):
        writer.log_metrics("r", step, {"x": float(step)})
    writer.flush()
    stats = writer.stats()
    assert stats.write_errors >= 1 and stats.rows_pending == 50 and stats.rows_written == 0
    assert "cannot write" in caplog.text
    (root / "metrics").unlink()
    writer.flush()
    assert writer.stats().rows_pending == 0
    assert "resumed" in caplog.text
    writer.close()
    assert _count(root) == 50


def test_full_buffer_drops_are_counted_and_recorded(tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.WARNING)
    root = tmp_path / "root"
    root.mkdir()
    (root / "metrics").write_text("blocks writing")
    writer = Writer(root, flush_interval=0.05, max_buffer_rows=100)
    for step in range(40):
        writer.log_metrics("r", step, {"a": 1.0, "b": 2.0, "c": 3.0, "d": 4.0, "e": 5.0})
    writer.flush()
    assert writer.stats().rows_dropped == 100
    assert "buffer full" in caplog.text
    (root / "metrics").unlink()
    writer.close()
    store = Store(root)
    assert store.sql("SELECT count(*) FROM metrics").column(0)[0].as_py() == 100
    payload = json.loads(store.sql("SELECT payload FROM events WHERE kind = 'dropped_rows'")[0][0].as_py())
    assert payload["rows"] == 100


def test_rows_that_cannot_be_written_at_close_are_reported(tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.WARNING)
    root = tmp_path / "root"
    root.mkdir()
    (root / "metrics").write_text("blocks writing")
    writer = Writer(root)
    writer.log_metrics("r", 0, {"a": 1.0})
    stats = writer.close()
    assert stats.rows_dropped == 1 and stats.rows_pending == 0
    assert "could not be written" in caplog.text


def test_log_after_close_is_counted_not_lost_silently(tmp_path: Path) -> None:
    writer = Writer(tmp_path)
    writer.close()
    writer.log_metrics("r", 0, {"a": 1.0, "b": 2.0})
    assert writer.stats().rows_dropped == 2


def test_atexit_flushes_a_writer_that_was_never_closed(tmp_path: Path) -> None:
    run_python(
        "import sys, storage\n"
        "w = storage.Writer(sys.argv[1], flush_interval=3600)\n"
        "for s in range(100): w.log_metrics('r', s, {'x': float(s)})\n",
        str(tmp_path),
    )
    assert _count(tmp_path) == 100


def test_a_forked_child_never_writes_the_parents_rows(tmp_path: Path) -> None:
    import os

    writer = Writer(tmp_path, flush_interval=3600)
    writer.log_metrics("r", 0, {"x": 1.0})
    pid = os.fork()
    if pid == 0:  # child: its inherited copy must stay inert
        writer.log_metrics("r", 1, {"x": 2.0})
        writer.flush()
        writer.close()
        os._exit(0)
    os.waitpid(pid, 0)
    writer.close()
    assert Store(tmp_path).sql("SELECT step FROM metrics").column(0).to_pylist() == [0]


def test_policy_version_worker_and_rank_are_stored(tmp_path: Path) -> None:
    with Writer(tmp_path) as writer:
        writer.log_metrics("r", 5, {"x": 1.0}, policy_version=4, source="rollout", rank=3, worker="w-7")
        writer.log_metrics("r", 6, {"x": 1.0})
    rows = (
        Store(tmp_path)
        .sql("SELECT step, policy_version, source, rank, worker FROM metrics ORDER BY step")
        .to_pylist()
    )
    assert rows == [
        {"step": 5, "policy_version": 4, "source": "rollout", "rank": 3, "worker": "w-7"},
        {"step": 6, "policy_version": None, "source": "trainer", "rank": 0, "worker": None},
    ]


def test_temp_files_are_hidden_from_readers(tmp_path: Path) -> None:
    with Writer(tmp_path, writer_id="w") as writer:
        writer.log_metrics("r", 0, {"x": 1.0})
    part = tmp_path / "metrics" / "run_id=r"
    src = next(part.glob("*.parquet"))
    shutil.copy(src, part / f".{src.name}.123.tmp")  # what a writer killed mid-write leaves
    assert _count(tmp_path) == 1
