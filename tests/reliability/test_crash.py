"""Crash safety: writers and compactions killed with SIGKILL at random moments.

A trainer on a shared cluster gets OOM-killed, pre-empted or ``kill -9``ed by a scheduler, and comes
back into the same run. What was flushed before each kill must be there exactly once, no file may
be unreadable, and what a kill loses is bounded by the flush interval.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from logprobe.storage import Store, Writer
from tests.reliability import _children
from tests.reliability.conftest import scale

pytestmark = pytest.mark.multiprocess
FLUSH_INTERVAL = 0.2
# One flush interval, plus what one flush can take on a busy 2-core machine.
LOSS_BOUND_S = FLUSH_INTERVAL + 0.5


def _wait_for_temp_file(partition: Path, pid: int, deadline: float) -> bool:
    """Poll until the writer ``pid``'s temp file exists: killing then lands in the middle of a write."""
    mine = f".{pid}.tmp"  # storage._layout.temp_path names temp files after the writing process
    while time.time() < deadline:
        try:
            if any(name.endswith(mine) for name in os.listdir(partition)):
                return True
        except FileNotFoundError:
            pass
    return False


def test_fifty_sigkills_into_one_run_lose_nothing_flushed(tmp_path: Path, forkserver, figures) -> None:
    kills = int(scale(50, 200))
    rng = random.Random(9)
    run_id = "crashy"
    partition = tmp_path / "metrics" / f"run_id={run_id}"
    lives = []
    mid_write = 0
    for life in range(kills):
        parent, child = forkserver.Pipe(duplex=False)
        proc = forkserver.Process(
            target=_children.log_until_killed, args=(str(tmp_path), run_id, life, FLUSH_INTERVAL, child)
        )
        proc.start()
        child.close()
        kind, writer_id = parent.recv()
        assert kind == "ready"
        started = time.time()
        if life % 2 and _wait_for_temp_file(partition, proc.pid, time.time() + 3 * FLUSH_INTERVAL):
            mid_write += 1  # every other kill aims at the moment a file is being written
        else:
            time.sleep(rng.uniform(0.05, 1.0))
        proc.kill()
        killed_at = time.time()
        proc.join()
        progress = (0, 0, 0.0)
        while True:  # the reports sent before the kill; a message cut by the kill ends them
            try:
                message = parent.recv()
            except (EOFError, OSError):
                break
            if message[0] == "progress":
                progress = message[1:]
        lives.append(
            {
                "life": life,
                "writer_id": writer_id,
                "started": started,
                "killed_at": killed_at,
                "progress": progress,
            }
        )

    store = Store(tmp_path)
    assert not store.bad_files, f"unreadable files after the kills: {store.bad_files}"
    per_life = {
        row["life"]: row
        for row in store.sql(
            "SELECT CAST(value AS INT) AS life, count(*) AS n FROM metrics WHERE name = 'life' GROUP BY 1"
        ).to_pylist()
    }
    dupes = store.sql(
        "SELECT worker, step, name, count(*) AS n FROM metrics GROUP BY ALL HAVING n > 1 LIMIT 5"
    ).to_pylist()
    assert dupes == [], f"rows written twice: {dupes}"
    lost_windows = []
    for entry in lives:
        life = entry["life"]
        written_reported = entry["progress"][0]
        steps = (
            store.sql(
                "SELECT step FROM metrics WHERE name = 'step_copy' AND worker = ? ORDER BY step",
                params=[f"life-{life}"],
            )
            .column(0)
            .to_pylist()
        )
        assert steps == list(range(len(steps))), f"life {life}: rows must form a gap-free prefix"
        on_disk = sum(
            pq.read_metadata(path).num_rows
            for table_dir in tmp_path.iterdir()
            for path in table_dir.glob(f"run_id={run_id}/{entry['writer_id']}-*.parquet")
        )
        assert on_disk >= written_reported, (
            f"life {life}: the writer reported {written_reported} rows written, the store holds {on_disk}"
        )
        # What the kill lost: the rows logged after the newest saved one (or since the start).
        last_saved = store.sql(
            "SELECT max(value) FROM metrics WHERE name = 'logged_at' AND worker = ?",
            params=[f"life-{life}"],
        )[0][0].as_py()
        lost_windows.append(entry["killed_at"] - (last_saved or entry["started"]))
        assert per_life.get(life, {"n": 0})["n"] == len(steps)
    assert sum(1 for n in per_life.values() if n["n"]) >= kills // 3, "too few lives flushed anything"
    worst = max(lost_windows)
    assert worst <= LOSS_BOUND_S, f"a kill lost {worst:.3f} s of rows (bound {LOSS_BOUND_S} s)"
    figures(
        kills_survived=kills,
        kills_mid_file_write=mid_write,
        unreadable_files=len(store.bad_files),
        duplicate_rows=0,
        rows_kept=int(store.sql("SELECT count(*) FROM metrics")[0][0].as_py()),
        worst_loss_window_s=round(worst, 3),
        median_loss_window_s=round(sorted(lost_windows)[len(lost_windows) // 2], 3),
        flush_interval_s=FLUSH_INTERVAL,
    )


def _seed_store(root: Path, runs: int, files: int, rows: int) -> pa.Table:
    for f in range(files):
        with Writer(root, writer_id=f"seed{f}") as writer:
            for r in range(runs):
                for step in range(rows):
                    writer.log_metrics(
                        f"run{r:02d}", f * rows + step, {"x": float(r * 1e6 + f * rows + step)}
                    )
    return _totals(root)


def _totals(root: Path) -> pa.Table:
    with Store(root) as store:
        assert not store.bad_files, store.bad_files
        return store.sql(
            "SELECT run_id, count(*) AS n, count(DISTINCT step) AS steps, sum(value) AS total "
            "FROM metrics GROUP BY run_id ORDER BY run_id"
        )


def _compact_files(partition: Path) -> set[str]:
    return {name for name in os.listdir(partition) if name.startswith((".compact-", "compact-"))}


def _wait_for_compaction_in(
    partition: Path, before: set[str], proc: multiprocessing.process.BaseProcess
) -> None:
    """Poll until the compaction has started writing into ``partition`` (a new merged temp or final file)."""
    deadline = time.time() + 30
    while proc.is_alive() and time.time() < deadline:
        if _compact_files(partition) - before:
            return


def test_compaction_killed_midway_leaves_every_row_once(tmp_path: Path, forkserver, figures) -> None:
    rounds = int(scale(8, 40))
    runs = 24
    rng = random.Random(3)
    expected = _seed_store(tmp_path, runs=runs, files=6, rows=400)
    killed = 0
    for round_ in range(rounds):
        # Kill it while it works on a randomly chosen partition: mid-write or between the merged
        # file's rename and the deletion of the files it replaces.
        target = tmp_path / "metrics" / f"run_id=run{rng.randrange(runs):02d}"
        before = _compact_files(target)
        proc = forkserver.Process(target=_children.compact_store, args=(str(tmp_path),))
        proc.start()
        _wait_for_compaction_in(target, before, proc)
        if proc.is_alive():
            proc.kill()
            killed += 1
        proc.join()
        # Readers see every row exactly once after each kill; then new files arrive for the next round.
        assert _totals(tmp_path) == expected, f"round {round_}: rows changed after a killed compaction"
        expected = _seed_more(tmp_path, round_)
    proc = forkserver.Process(target=_children.compact_store, args=(str(tmp_path),))
    proc.start()
    proc.join()
    assert proc.exitcode == 0
    assert _totals(tmp_path) == expected
    live = list(tmp_path.glob("metrics/run_id=*/*.parquet"))
    assert len(live) == runs, "after a clean compaction each run is one file (leftovers removed)"
    assert killed >= rounds // 2, f"only {killed} of {rounds} compactions were killed mid-way"
    figures(compactions_killed=killed, rounds=rounds, rows_checked=int(sum(expected.column("n").to_pylist())))


def _seed_more(root: Path, round_: int) -> pa.Table:
    with Writer(root, writer_id=f"more{round_}") as writer:
        for r in range(24):
            for step in range(50):
                writer.log_metrics(f"run{r:02d}", 10_000 + round_ * 50 + step, {"x": float(step)})
    return _totals(root)
