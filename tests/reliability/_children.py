"""What the reliability suite's child processes run.

The parent starts them from a ``multiprocessing`` forkserver that has imported ``collectors``
already, so a child is writing a few milliseconds after it is asked for (a fresh interpreter would
spend ~2.5 s importing torch): fifty SIGKILLs or 32 writers fit in a CI budget that way.
"""

from __future__ import annotations

import time
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event

from logprobe import collectors
from logprobe.storage import LiveSeries, Store, alerts, compact, list_runs, metric_series


def log_until_killed(root: str, run_id: str, life: int, flush_interval: float, conn: Connection) -> None:
    """Log ~1,000 steps/s into ``run_id`` as worker ``life-<life>`` until SIGKILLed.

    Every 20 steps it tells the parent how many rows its writer has *written* so far (rows the
    store must hold after the kill) and the wall time of the newest step it logged.
    """
    run = collectors.init(
        run_id=run_id, root=root, worker=f"life-{life}", rank=life, flush_interval=flush_interval
    )
    conn.send(("ready", run.writer.writer_id))
    step = 0
    while True:
        now = time.time()
        run.log(step, {"life": float(life), "step_copy": float(step), "logged_at": now})
        step += 1
        if step % 20 == 0:
            conn.send(("progress", run.writer.stats().rows_written, step, now))
        time.sleep(0.001)


def compact_store(root: str) -> None:
    compact(root)


def load_writer(
    root: str, run_id: str, index: int, rows_per_s: int, seconds: float, names: int, conn: Connection
) -> None:
    """One of the load test's writers: ``rows_per_s`` rows as steps of ``names`` metrics each.

    It times every ``run.log`` call (the caller's cost; flushing happens on the writer's thread)
    and sends the latencies back, so the parent can compare the p99 under load with idle.
    """
    source = "trainer" if index % 2 == 0 else "rollout"
    run = collectors.init(run_id=run_id, root=root, source=source, rank=index, worker=f"w{index}")
    conn.send("ready")
    conn.recv()  # start together
    steps = int(rows_per_s * seconds / names)
    period = names / rows_per_s
    latencies = []
    start = time.perf_counter()
    for step in range(steps):
        metrics = {f"m{j}": float(index * 1_000_000 + step) for j in range(names)}
        if index == 0:  # the watcher must see this one go bad halfway through, among 31 other writers
            metrics["mismatch/k3"] = 0.05 if step >= steps // 2 else 0.0
        t0 = time.perf_counter()
        run.log(step, metrics)
        latencies.append(time.perf_counter() - t0)
        delay = start + (step + 1) * period - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
    elapsed = time.perf_counter() - start
    run.close()
    stats = run.writer.stats()
    conn.send((latencies, elapsed, stats.rows_dropped, stats.write_errors))


def dashboard_reader(root: str, run_id: str, stop: Event, conn: Connection, period: float) -> None:
    """What an open dashboard asks of the store every ``period`` seconds until ``stop``; counts rounds
    and errors."""
    from logprobe import monitor

    store = Store(root)
    live = LiveSeries([run_id], ["m0"])
    rounds, errors, seconds = 0, [], []
    while not stop.is_set():
        t0 = time.perf_counter()
        try:
            list_runs(store)
            live.update(store)
            metric_series(store, [run_id], ["m1", "mismatch/k3"])
            alerts(store, [run_id])
            monitor.detect_run(store, run_id)
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
        seconds.append(time.perf_counter() - t0)
        rounds += 1
        time.sleep(max(0.0, period - seconds[-1]))
    conn.send((rounds, errors, seconds))
