"""Live-latency benchmark: how long after ``run.log()`` returns a person (or an alert) can see the value.

A trainer logs through ``collectors.init(..., flush_interval=F)`` / ``run.log(step, metrics)``; the
Writer's background thread writes what is queued every F seconds. Two other processes watch the
same data root, each polling every ``--poll-ms`` milliseconds, as the dashboard and ``logprobe
alerts watch`` do:

  (a) a reader: ``Store.refresh()`` and, when the files changed, a query for the steps it has not
      seen yet; a step counts as visible when that query returns it;
  (b) an alert watcher: ``monitor.AlertWatcher(store, AlertEngine([rule])).tick()`` in a loop, with
      a rule on ``mismatch/k3`` (``above``, ``for_steps=1``, no cooldown). The trainer logs
      ``mismatch/k3`` above the threshold at even steps and below it at odd steps, so every step
      changes the alert's state (firing at even steps, resolved at odd ones) at a known step.

Latency per step = the watcher's ``time.time()`` when the step came back minus the trainer's
``time.time()`` right after ``run.log()`` returned (one machine, one wall clock, three processes).
Steps are logged at random gaps (uniform in 50-250 ms) so that they fall at every phase of the
flush period; the median is then about F/2 plus the costs of writing, polling and querying.

Correctness: every step must be seen exactly once with the value logged, and every alert must be
the expected state change at its step with the logged value; anything else raises.

Run it from the repository root: ``python -m bench.live_latency [--steps N] [--flush-intervals 1.0,0.1]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import multiprocessing as mp
import queue
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

import numpy as np

from bench import _report
from bench._workload import METRIC_NAMES
from logprobe import collectors, monitor, storage

DEFAULT_STEPS = 100
DEFAULT_FLUSH_INTERVALS = (1.0, 0.1)
DEFAULT_POLL_MS = 20.0
GAP_S = (0.05, 0.25)  # random pause between steps in the trainer
RUN_ID = "bench-live"
METRIC = "mismatch/k3"
THRESHOLD = 1e-2
RULE = "bench-k3-above"
READY_TIMEOUT_S = 120.0
SEED = 7


def k3_value(step: int) -> float:
    """Above the threshold at even steps, below at odd ones, and distinct per step (so a value seen
    can only be the one logged at that step)."""
    return (2 * THRESHOLD if step % 2 == 0 else THRESHOLD / 10) + step * 1e-7


def step_metrics(step: int) -> dict[str, float]:
    """The 20 metrics a trainer logs per step, ``mismatch/k3`` among them."""
    values = {name: float(step) + i / 100 for i, name in enumerate(METRIC_NAMES)}
    values[METRIC] = k3_value(step)
    return values


# ---------------------------------------------------------------------------------------- watchers


def _pace(started: float, poll_s: float) -> float:
    """Sleep out the rest of the poll period; returns how long the work of this poll took."""
    busy = time.time() - started
    time.sleep(max(0.0, poll_s - busy))
    return busy


def reader_main(root: str, poll_s: float, ready: Event, stop: Event, progress: Any, out: Any) -> None:
    """The dashboard's side: refresh the store, ask for steps not yet seen, note when each appears."""
    store = storage.Store(root)
    seen: dict[int, tuple[float, float]] = {}
    busy: list[float] = []
    last = -1
    query = "SELECT step, value FROM metrics WHERE run_id = ? AND name = ? AND step > ? ORDER BY step, ts"
    store.sql(query, [RUN_ID, METRIC, last])  # warm up DuckDB before the clock matters
    ready.set()
    while not stop.is_set():
        started = time.time()
        if store.refresh():
            rows = store.sql(query, [RUN_ID, METRIC, last]).to_pylist()
            now = time.time()
            for row in rows:
                if row["step"] in seen:
                    raise _report.BenchmarkError(f"reader: step {row['step']} came back twice")
                seen[row["step"]] = (now, row["value"])
            if rows:
                last = max(row["step"] for row in rows)
                progress.value = last
        busy.append(_pace(started, poll_s))
    store.close()
    out.put({"seen": {str(k): v for k, v in seen.items()}, "busy": busy})


def watcher_main(root: str, poll_s: float, ready: Event, stop: Event, progress: Any, out: Any) -> None:
    """``logprobe alerts watch``'s loop: ``AlertWatcher.tick()`` every poll, noting when each alert fires."""
    store = storage.Store(root)
    rule = monitor.Rule(RULE, METRIC, above=THRESHOLD, for_steps=1, cooldown_s=0.0, notify=())
    watcher = monitor.AlertWatcher(store, monitor.AlertEngine([rule]))
    watcher.tick()  # warm up on the empty store
    alerts: list[dict[str, Any]] = []
    busy: list[float] = []
    ready.set()
    while not stop.is_set():
        started = time.time()
        changed = watcher.tick()
        now = time.time()
        for alert in changed:
            alerts.append(
                {
                    "step": alert.step,
                    "state": alert.state,
                    "value": alert.value,
                    "rule": alert.rule,
                    "run_id": alert.run_id,
                    "t": now,
                }
            )
            progress.value = max(progress.value, alert.step)
        busy.append(_pace(started, poll_s))
    store.close()
    out.put({"alerts": alerts, "busy": busy})


# ---------------------------------------------------------------------------------------- measuring


@dataclasses.dataclass(frozen=True)
class Stats:
    """Latency percentiles in milliseconds over ``n`` steps."""

    n: int
    p50_ms: float
    p99_ms: float
    min_ms: float
    max_ms: float
    mean_ms: float

    @classmethod
    def of(cls, seconds: Sequence[float]) -> Stats:
        ms = np.asarray(seconds, dtype=np.float64) * 1e3
        p50, p99 = np.percentile(ms, [50.0, 99.0])
        return cls(len(ms), float(p50), float(p99), float(ms.min()), float(ms.max()), float(ms.mean()))


@dataclasses.dataclass(frozen=True)
class Result:
    flush_interval_s: float
    steps: int
    visible: Stats
    alert: Stats
    firing: Stats  # the alert transitions that were firings (even steps)
    reader_poll_busy_ms: float  # median time one poll's work took (refresh + query)
    watcher_tick_busy_ms: float
    alert_after_visible_ms: float  # median over steps of (alert latency - visible latency)
    metrics_files: int
    visible_s: list[float]
    alert_s: list[float]


def _collect(out: Any, proc: mp.process.BaseProcess, what: str, timeout_s: float) -> dict[str, Any]:
    try:
        result = out.get(timeout=timeout_s)
    except queue.Empty:
        raise _report.BenchmarkError(
            f"the {what} process returned nothing (exit code {proc.exitcode})"
        ) from None
    proc.join(timeout_s)
    return result


def measure(flush_interval: float, steps: int, poll_s: float, root: Path) -> Result:
    """One trainer run with ``flush_interval``, watched by a reader and an alert watcher process."""
    ctx = mp.get_context("spawn")  # fresh interpreters, like a dashboard and a watcher would be
    stop = ctx.Event()
    ready = [ctx.Event(), ctx.Event()]
    progress = [ctx.Value("q", -1), ctx.Value("q", -1)]
    outs = [ctx.Queue(), ctx.Queue()]
    procs = [
        ctx.Process(target=target, args=(str(root), poll_s, ev, stop, prog, out), daemon=True)
        for target, ev, prog, out in zip((reader_main, watcher_main), ready, progress, outs, strict=True)
    ]
    for proc in procs:
        proc.start()
    try:
        for ev, proc in zip(ready, procs, strict=True):
            if not ev.wait(READY_TIMEOUT_S):
                raise _report.BenchmarkError(f"{proc.name} did not start (exit code {proc.exitcode})")
        run = collectors.init(run_id=RUN_ID, root=root, flush_interval=flush_interval)
        rng = np.random.default_rng(SEED)
        logged: list[float] = []
        for step in range(steps):
            run.log(step, step_metrics(step))
            logged.append(time.time())
            time.sleep(rng.uniform(*GAP_S))
        # Let the background flush deliver the last steps (close() would flush them early).
        deadline = time.time() + 10 * flush_interval + 30.0
        while min(p.value for p in progress) < steps - 1 and time.time() < deadline:
            time.sleep(0.01)
        run.close()
    finally:
        stop.set()
    reader = _collect(outs[0], procs[0], "reader", 60.0)
    watcher = _collect(outs[1], procs[1], "watcher", 60.0)

    seen = {int(k): v for k, v in reader["seen"].items()}
    if sorted(seen) != list(range(steps)):
        missing = sorted(set(range(steps)) - set(seen))
        raise _report.BenchmarkError(
            f"reader: {len(missing)} step(s) never became visible, first {missing[:5]}"
        )
    for step, (_, value) in seen.items():
        if value != k3_value(step):
            raise _report.BenchmarkError(f"reader: step {step} read {value!r}, logged {k3_value(step)!r}")
    alerts = {a["step"]: a for a in watcher["alerts"]}
    if len(alerts) != len(watcher["alerts"]) or sorted(alerts) != list(range(steps)):
        raise _report.BenchmarkError(
            f"watcher: expected one alert per step 0..{steps - 1}, got steps {sorted(alerts)}"
        )
    for step, a in alerts.items():
        state = "firing" if step % 2 == 0 else "resolved"
        if (a["state"], a["value"], a["rule"], a["run_id"]) != (state, k3_value(step), RULE, RUN_ID):
            raise _report.BenchmarkError(
                f"watcher: step {step} gave {a}, expected {state} at {k3_value(step)!r}"
            )

    visible_s = [seen[s][0] - logged[s] for s in range(steps)]
    alert_s = [alerts[s]["t"] - logged[s] for s in range(steps)]
    if min(visible_s) <= 0 or min(alert_s) <= 0:
        raise _report.BenchmarkError("a step was seen before run.log() returned: the clocks disagree")
    return Result(
        flush_interval_s=flush_interval,
        steps=steps,
        visible=Stats.of(visible_s),
        alert=Stats.of(alert_s),
        firing=Stats.of(alert_s[0::2]),
        reader_poll_busy_ms=statistics.median(reader["busy"]) * 1e3,
        watcher_tick_busy_ms=statistics.median(watcher["busy"]) * 1e3,
        alert_after_visible_ms=statistics.median(a - v for a, v in zip(alert_s, visible_s, strict=True))
        * 1e3,
        metrics_files=len(list((root / "metrics").rglob("*.parquet"))),
        visible_s=visible_s,
        alert_s=alert_s,
    )


# ---------------------------------------------------------------------------------------- report


def render(
    results: Sequence[Result], steps: int, poll_ms: float, command: str, machine: dict[str, str]
) -> str:
    rows = []
    for r in results:
        for label, s in (("visible in a `Store` query", r.visible), ("alert state change", r.alert)):
            rows.append(
                [
                    f"{r.flush_interval_s:g} s",
                    label,
                    f"{s.p50_ms:,.0f} ms",
                    f"{s.p99_ms:,.0f} ms",
                    f"{s.min_ms:,.0f} ms",
                    f"{s.max_ms:,.0f} ms",
                ]
            )
    readings = [
        f"- flush_interval {r.flush_interval_s:g} s: median visible {r.visible.p50_ms:,.0f} ms against "
        f"{r.flush_interval_s * 500:,.0f} ms (half the flush interval, the average wait for the next "
        f"flush); the remaining {r.visible.p50_ms - r.flush_interval_s * 500:,.0f} ms is writing, "
        f"polling and querying. Per step, the alert came a median {r.alert_after_visible_ms:,.0f} ms "
        "after the reader saw the value (the two poll independently, so this can be below zero)."
        for r in results
    ]
    out = [
        "# logprobe live-latency benchmark",
        "",
        f"One trainer process logs {steps} steps of 20 metrics through `collectors.init` / `run.log` "
        f"(random {GAP_S[0] * 1e3:.0f}-{GAP_S[1] * 1e3:.0f} ms between steps); a reader process "
        f"(`Store.refresh()` + a query for new steps) and an alert-watcher process "
        f"(`AlertWatcher.tick()`) poll the same root every {poll_ms:g} ms. Latency = the watcher's "
        "`time.time()` when the step came back minus the trainer's `time.time()` right after "
        f"`run.log()` returned; percentiles over the {steps} steps (p99 of {steps} samples is close to "
        "the maximum).",
        "",
        *_report.command_section(command),
        "## Results",
        "",
        *_report.markdown_table(
            ["flush_interval", "from `run.log()` returning to", "median", "p99", "min", "max"], rows
        ),
        "",
        *readings,
        "",
        "## Detail",
        "",
        *_report.markdown_table(
            [
                "flush_interval",
                "firing only: median / p99",
                "reader poll work (median)",
                "watcher tick work (median)",
                "metrics files written",
            ],
            [
                [
                    f"{r.flush_interval_s:g} s",
                    f"{r.firing.p50_ms:,.0f} / {r.firing.p99_ms:,.0f} ms ({r.firing.n} alerts)",
                    f"{r.reader_poll_busy_ms:.1f} ms",
                    f"{r.watcher_tick_busy_ms:.1f} ms",
                    f"{r.metrics_files}",
                ]
                for r in results
            ],
        ),
        "",
        "## Checks (all passed, or there would be no report)",
        "",
        "- The reader saw every step exactly once, with the exact value logged for it.",
        "- The watcher reported exactly one alert per step: `firing` at even steps (value above the "
        "threshold), `resolved` at odd ones, each with the logged value.",
        "",
        *_report.machine_section(machine),
        "## How to read this",
        "",
        "- The writer flushes on a timer, so a value waits on average half a flush interval before it "
        "is in a file at all; the rest of the latency is the file write, the watcher's poll period "
        f"({poll_ms:g} ms) and its refresh and query.",
        "- Poll work is one poll's own time (directory listing, new footers, the query); the watcher "
        "runs its query on every tick, the reader only when the file set changed.",
        "- Three processes share this machine's cores, as a trainer, a dashboard and a watcher would.",
        "",
    ]
    return "\n".join(out)


def to_json(
    results: Sequence[Result], steps: int, poll_ms: float, command: str, machine: dict[str, str]
) -> dict[str, Any]:
    return {
        "steps": steps,
        "poll_ms": poll_ms,
        "command": command,
        "machine": machine,
        "results": [dataclasses.asdict(r) for r in results],
        "checks_passed": True,
    }


# ---------------------------------------------------------------------------------------- CLI


def _seconds(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"a flush interval must be positive seconds, got {text!r}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    parser = _report.benchmark_parser("live_latency", __doc__)
    _report.add_count(parser, "--steps", DEFAULT_STEPS, "steps logged per run")
    _report.add_list(parser, "--flush-intervals", _seconds, DEFAULT_FLUSH_INTERVALS, "flush intervals (s)")
    parser.add_argument(
        "--poll-ms", type=float, default=DEFAULT_POLL_MS, help="watchers' poll period (default %(default)s)"
    )
    args, command = _report.parse_command(parser, argv)
    if not args.poll_ms > 0:
        parser.error("--poll-ms must be > 0")

    machine = _report.machine_info()
    results = []
    for interval in args.flush_intervals:
        with tempfile.TemporaryDirectory(prefix="logprobe-live-") as tmp:
            results.append(measure(interval, args.steps, args.poll_ms / 1e3, Path(tmp)))
    text = render(results, args.steps, args.poll_ms, command, machine)
    return _report.finish(args, text, to_json(results, args.steps, args.poll_ms, command, machine))


if __name__ == "__main__":
    sys.exit(main())
