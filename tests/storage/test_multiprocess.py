"""Many writer processes into one run, live readers, and writers killed with SIGKILL."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from logprobe import storage
from logprobe.storage import Store

CHILD = Path(__file__).with_name("writer_child.py")
pytestmark = pytest.mark.multiprocess


def _spawn(root: Path, run_id: str, index: int, steps: int, interval: float) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(CHILD), str(root), run_id, str(index), str(steps), str(interval)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_eight_writers_and_a_live_reader_lose_and_duplicate_nothing(tmp_path: Path) -> None:
    steps = 3000
    procs = [_spawn(tmp_path, "shared", i, steps, 0.05) for i in range(8)]
    store = Store(tmp_path)
    reads = 0
    seen_max = 0
    while any(p.poll() is None for p in procs):
        store.refresh()  # the reader must never error while files appear
        count = store.sql("SELECT count(*) FROM metrics")[0][0].as_py()
        assert count >= seen_max, "rows disappeared under a reader"
        seen_max = count
        storage.list_runs(store)
        reads += 1
    for p in procs:
        out, err = p.communicate()
        assert p.returncode == 0, err
        assert "closed" in out
    assert reads > 3, "the reader should have overlapped the writers"
    store.refresh()
    assert not store.bad_files
    dupes = store.sql(
        "SELECT rank, step, name, count(*) AS n FROM metrics GROUP BY ALL HAVING n <> 1 LIMIT 5"
    ).to_pylist()
    assert dupes == []
    per_writer = store.sql(
        "SELECT rank, count(DISTINCT step) AS steps, min(step) AS lo, max(step) AS hi, "
        "bool_and(value = rank) FILTER (WHERE name = 'writer') AS own "
        "FROM metrics GROUP BY rank ORDER BY rank"
    ).to_pylist()
    assert per_writer == [
        {"rank": i, "steps": steps, "lo": 0, "hi": steps - 1, "own": True} for i in range(8)
    ]
    assert store.sql("SELECT count(*) FROM runs")[0][0].as_py() == 8
    assert storage.list_runs(store).to_pylist()[0]["status"] == "finished"


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_sigkill_mid_run_loses_at_most_one_flush_interval(tmp_path: Path, seed: int) -> None:
    interval = 0.2
    proc = _spawn(tmp_path, "killed", 0, -1, interval)
    assert proc.stdout.readline().strip() == "ready"
    store = Store(tmp_path)
    time.sleep(random.Random(seed).uniform(0.5, 1.5))
    for _ in range(3):  # readers during the run never see a partial file
        store.refresh()
        assert not store.bad_files
    killed_at = time.time()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    store.refresh()
    assert not store.bad_files, store.bad_files
    steps = store.sql("SELECT step FROM metrics WHERE name = 'step_copy' ORDER BY step").column(0).to_pylist()
    assert steps, "nothing was flushed before the kill"
    assert steps == list(range(len(steps))), "rows must form a gap-free, duplicate-free prefix"
    last_saved = store.sql("SELECT max(value) FROM metrics WHERE name = 'logged_at'")[0][0].as_py()
    lost_window = killed_at - last_saved
    # One interval, plus the time one flush takes on a busy 2-core machine.
    assert lost_window <= interval + 0.5, f"lost {lost_window:.3f} s of rows"
