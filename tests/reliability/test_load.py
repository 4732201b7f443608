"""Load: 32 writer processes into one run while the dashboard's queries and an alert watcher run.

Trainer ranks and rollout workers (alternating sources) each log 1,000 rows/s. The test proves
every row lands exactly once, no reader query fails while thousands of files appear, the watcher
fires the alert that one writer provokes, and ``log()``'s p99 stays within 2x of the idle figure
(one writer alone, same rate, shape and duration; the median of three such runs).

Which p99: each writer's own, and the median of those is what is held to 2x. On this 2-core VM
the 32 writers, the dashboard's DuckDB threads and the watcher oversubscribe the CPU, and the
pooled p99 of all calls is set by the few writers the scheduler happened to preempt mid-call: with
the reader refreshing every second it landed between 1.0x and 2.2x of idle over repeated runs (at
the dashboard's real cadence, below, 0.5x-1.3x). Both figures are printed and recorded in the
README; the pooled one is not asserted.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from logprobe.app.views.metrics import REFRESH_S
from logprobe.storage import Store
from tests.reliability import _children
from tests.reliability.conftest import scale

pytestmark = pytest.mark.multiprocess
WRITERS = 32
ROWS_PER_S = 1_000
NAMES = 5  # metrics per log() call: 200 calls/s per writer
RUN = "loaded"
IDLE_RUNS = 3


def _writers(forkserver, root: Path, count: int, seconds: float) -> list[tuple]:
    """Start ``count`` writers, wait until all are ready, start them together, collect their reports."""
    started = []
    for index in range(count):
        parent, child = forkserver.Pipe()
        proc = forkserver.Process(
            target=_children.load_writer, args=(str(root), RUN, index, ROWS_PER_S, seconds, NAMES, child)
        )
        proc.start()
        child.close()  # so a writer that dies makes recv() raise EOFError instead of waiting forever
        started.append((proc, parent))
    for proc, conn in started:
        assert conn.poll(60) and conn.recv() == "ready", f"writer {proc.name} did not start ({proc.exitcode})"
    for _, conn in started:
        conn.send("go")
    return started


def _collect(started: list[tuple], timeout: float) -> list[tuple]:
    reports = []
    for proc, conn in started:
        assert conn.poll(timeout), "a writer did not finish"
        reports.append(conn.recv())
        proc.join()
        assert proc.exitcode == 0
    return reports


def _p99(reports: list[tuple]) -> float:
    return float(np.percentile(np.concatenate([np.asarray(r[0]) for r in reports]), 99))


def test_32_writers_with_dashboard_and_alert_watcher(tmp_path: Path, forkserver, figures) -> None:
    seconds = scale(15, 60)
    # The idle figure is the median of three lone runs: one run's p99 rests on its 30 slowest calls
    # and moved between 46 and 92 us from run to run here, enough to fail a 2x gate by itself.
    idle_runs = [
        _collect(_writers(forkserver, tmp_path / f"idle-{i}", 1, seconds), timeout=seconds + 60)
        for i in range(IDLE_RUNS)
    ]
    idle_p99s = sorted(_p99(run) for run in idle_runs)
    idle_p99 = float(np.median(idle_p99s))
    idle = idle_runs[0]

    root = tmp_path / "store"
    started = _writers(forkserver, root, WRITERS, seconds)
    stop = forkserver.Event()
    reader_conn, reader_child = forkserver.Pipe()
    # Two open dashboards' worth: the live charts refresh every REFRESH_S (3 s) per browser tab.
    period = REFRESH_S / 2
    reader = forkserver.Process(
        target=_children.dashboard_reader, args=(str(root), RUN, stop, reader_child, period)
    )
    reader.start()
    watcher = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "logprobe.app.cli",
            "alerts",
            "watch",
            "--root",
            str(root),
            "--interval",
            "0.5",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    reports = _collect(started, timeout=seconds + 60)
    stop.set()
    rounds, errors, query_seconds = reader_conn.recv()
    reader.join()
    # Let the watcher take in the last files, then stop it the way a user does (Ctrl-C).
    time.sleep(2.0)
    watcher.send_signal(signal.SIGINT)
    _, watcher_err = watcher.communicate(timeout=60)

    assert errors == [], f"reader errors under load: {errors[:3]}"
    # At least half the rounds a dashboard makes: a round slows as files pile up (a figure below).
    assert rounds >= seconds / period / 2, f"the dashboard reader managed only {rounds} rounds"
    assert "Traceback" not in watcher_err, watcher_err[-3000:]
    assert all(r[2] == 0 and r[3] == 0 for r in reports), "no writer may drop rows or fail a write"

    steps = int(ROWS_PER_S * seconds / NAMES)
    with Store(root) as store:
        assert not store.bad_files, store.bad_files
        per_rank = store.sql(
            "SELECT rank, count(*) AS n, count(DISTINCT (step, name)) AS distinct_rows FROM metrics "
            "WHERE run_id = ? GROUP BY rank ORDER BY rank",
            params=[RUN],
        ).to_pylist()
        expected = [
            {"rank": i, "n": steps * (NAMES + (i == 0)), "distinct_rows": steps * (NAMES + (i == 0))}
            for i in range(WRITERS)
        ]
        assert per_rank == expected, "every row exactly once"
        fired = store.sql(
            "SELECT rule, step FROM alerts WHERE run_id = ? AND state = 'firing' AND source = 'watcher'",
            params=[RUN],
        ).to_pylist()
        files = len(store.files("metrics"))
    assert any(a["rule"].startswith("mismatch/k3") and a["step"] >= steps // 2 for a in fired), fired
    assert not any(a["step"] < steps // 2 for a in fired), f"false alarms: {fired}"

    load_p99 = _p99(reports)
    writer_p99 = float(np.median([_p99([r]) for r in reports]))
    rows = sum(r["n"] for r in per_rank)
    achieved = rows / max(r[1] for r in reports)
    figures(
        writers=WRITERS,
        seconds=seconds,
        rows=rows,
        rows_per_s_held=round(achieved),
        files=files,
        reader_rounds=rounds,
        reader_errors=len(errors),
        reader_round_p50_ms=round(float(np.median(query_seconds)) * 1000, 1),
        reader_round_max_ms=round(max(query_seconds) * 1000, 1),
        log_p99_idle_us=round(idle_p99 * 1e6, 1),
        log_p99_idle_runs_us=[round(v * 1e6, 1) for v in idle_p99s],
        log_p99_per_writer_median_us=round(writer_p99 * 1e6, 1),
        p99_ratio=round(writer_p99 / idle_p99, 2),
        log_p99_pooled_us=round(load_p99 * 1e6, 1),
        pooled_p99_ratio=round(load_p99 / idle_p99, 2),
        log_p50_idle_us=round(float(np.median(idle[0][0])) * 1e6, 1),
        log_p50_load_us=round(float(np.median(np.concatenate([r[0] for r in reports]))) * 1e6, 1),
    )
    assert writer_p99 <= 2 * idle_p99, (
        f"log() p99 {writer_p99 * 1e6:.0f} us per writer under load vs {idle_p99 * 1e6:.0f} idle"
    )
