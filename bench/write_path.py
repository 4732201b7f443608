"""Write-path benchmark: what ``Run.log`` costs a training loop, and how fast the data comes back.

A tracker sits inside the trainer's step loop, so the number that matters is the latency of one
``Run.log(step, metrics)`` call, in particular its tail (p99, p99.9): a slow call stalls the step.
This script logs one run of ``--steps`` steps with ``--metrics`` scalar metrics each and reports

  (a) the per-call latency of ``Run.log`` (p50, p99, p99.9, max, in microseconds),
  (b) the total write time, from the first call until ``Run.close()`` has every row in Parquet,
  (c) the read-back time (``Store`` construction plus ``SELECT name, step, value FROM metrics``
      of every point) and the downsampled chart query (``metric_series``, 1000 points per series),
  (d) the bytes on disk,

next to a floor measured in the same process on the same workload: bare pyarrow, which only
appends to Python lists per step and writes one Parquet file at the end. The floor is what the
logging call could cost at best in Python, so the ratio says how much logprobe's durability
(background flushes, atomic files, typed schema) adds to it.

The shared CI machines are small and noisy, so every measurement is repeated (``--repeats``, fresh
data root in a temp dir each time) and the median of each number is reported, with the spread.
Garbage collection stays enabled, as it is in a real trainer; the report counts the collections
that ran inside the timed loop.

Run it from the repository root: ``python -m bench.write_path [--steps N] [--metrics M] [--out PATH]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import logprobe
from logprobe import collectors, storage

DEFAULT_STEPS = 10_000
DEFAULT_METRICS = 20
DEFAULT_REPEATS = 3
DEFAULT_OUT = Path(__file__).parent / "results" / "write_path.md"
CHART_MAX_POINTS = 1000
RUN_ID = "bench-write-path"
FLOOR_COMPRESSION = "zstd"  # the Writer's default, so the floor compresses as hard as logprobe does

# The targets for this workload.
TARGET_P50_US = 3.0
TARGET_P99_US = 15.0
TARGET_READ_S = 0.15

# Quoted in the issue for the same workload on this machine kind; not re-measured here.
QUOTED_P50 = (
    ("trackio", "33 us"),
    ("W&B offline", "126 us"),
    ("MLflow", "450-1,600 us"),
)

# What an RL trainer logs every step (names as logprobe's collectors and common trainers use).
METRIC_NAMES = (
    "mismatch/k1",
    "mismatch/k2",
    "mismatch/k3",
    "mismatch/tis_weight_mean",
    "mismatch/max_abs_log_ratio",
    "train/loss",
    "train/policy_loss",
    "train/entropy",
    "train/clip_frac",
    "train/approx_kl",
    "train/grad_norm",
    "train/lr",
    "rollout/reward_mean",
    "rollout/reward_std",
    "rollout/response_len_mean",
    "rollout/tokens_per_s",
    "perf/step_time_s",
    "perf/gpu_mem_gb",
    "perf/mfu",
    "timing/weight_sync_s",
)

T = TypeVar("T")


class BenchmarkError(RuntimeError):
    """The benchmark's own correctness checks failed (rows lost or changed); its numbers are void."""


# ---------------------------------------------------------------------------------------- workload


def metric_names(count: int) -> list[str]:
    """``count`` realistic names; beyond the 20 built-in ones, numbered ``extra/metric_NNN``."""
    extra = [f"extra/metric_{i:03d}" for i in range(max(0, count - len(METRIC_NAMES)))]
    return [*METRIC_NAMES, *extra][:count]


def make_workload(steps: int, n_metrics: int, seed: int = 0) -> list[dict[str, float]]:
    """One fresh dict of Python floats per step, built up front so that timing never includes it.

    Values drift and jitter per step (a trend times log-normal noise) so that Parquet cannot
    compress them away, and they are Python floats because that is what ``tensor.item()`` gives a
    trainer.
    """
    names = metric_names(n_metrics)
    rng = np.random.default_rng(seed)
    level = rng.uniform(1e-3, 1e3, size=n_metrics)
    trend = 1.0 + rng.uniform(-0.5, 0.5, size=n_metrics) * np.linspace(0.0, 1.0, steps)[:, None]
    noise = np.exp(0.1 * rng.standard_normal((steps, n_metrics)))
    rows: list[list[float]] = (level * trend * noise).tolist()
    return [dict(zip(names, row, strict=True)) for row in rows]


# ---------------------------------------------------------------------------------------- results


@dataclasses.dataclass(frozen=True)
class Latency:
    """Per-call latency percentiles in microseconds."""

    p50_us: float
    p99_us: float
    p999_us: float
    max_us: float
    mean_us: float

    @classmethod
    def of(cls, samples_ns: Sequence[int]) -> Latency:
        us = np.asarray(samples_ns, dtype=np.float64) / 1e3
        p50, p99, p999 = np.percentile(us, [50.0, 99.0, 99.9])
        return cls(float(p50), float(p99), float(p999), float(us.max()), float(us.mean()))


@dataclasses.dataclass(frozen=True)
class LogprobeResult:
    """One repeat of the logprobe measurement."""

    latency: Latency
    loop_s: float  # the timed calls alone, without close()
    write_s: float
    store_open_s: float
    select_s: float
    read_s: float  # store_open_s + select_s: what the read-back target is about
    chart_s: float
    rows_read: int
    chart_rows: int
    bytes_total: int
    bytes_metrics: int
    files: int
    metrics_files: int  # one per flush that had metrics to write
    gc_gen0: int
    gc_gen1: int
    gc_gen2: int


@dataclasses.dataclass(frozen=True)
class FloorResult:
    """One repeat of the bare-pyarrow floor."""

    latency: Latency
    write_s: float
    bytes_total: int


# ---------------------------------------------------------------------------------------- measuring


def _time_calls(
    log: Callable[[int, dict[str, float]], None], workload: Sequence[dict[str, float]]
) -> list[int]:
    """Call ``log(step, metrics)`` once per step and return each call's duration in nanoseconds."""
    perf = time.perf_counter_ns
    samples = [0] * len(workload)
    for step, metrics in enumerate(workload):
        t0 = perf()
        log(step, metrics)
        samples[step] = perf() - t0
    return samples


def timer_overhead(n: int = 10_000) -> Latency:
    """Two back-to-back ``perf_counter_ns`` calls: the part of every latency that is the clock itself."""
    return Latency.of(_time_calls(lambda step, metrics: None, [{}] * n))


def _gc_collections() -> list[int]:
    return [gen["collections"] for gen in gc.get_stats()]


def _bytes_under(path: Path) -> tuple[int, int]:
    """(total bytes, number of files) of every file below ``path``."""
    total = files = 0
    for directory, _, names in os.walk(path):
        for name in names:
            total += os.path.getsize(os.path.join(directory, name))
            files += 1
    return total, files


def _expected_table(workload: Sequence[Mapping[str, float]]) -> pa.Table:
    steps = [step for step, metrics in enumerate(workload) for _ in metrics]
    names = [name for metrics in workload for name in metrics]
    values = [value for metrics in workload for value in metrics.values()]
    return pa.table(
        {
            "name": pa.array(names, pa.string()),
            "step": pa.array(steps, pa.int64()),
            "value": pa.array(values, pa.float64()),
        }
    )


def _check_rows(read: pa.Table, expected: pa.Table) -> None:
    """Every logged point came back exactly once, with its exact value."""
    if read.num_rows != expected.num_rows:
        raise BenchmarkError(f"read back {read.num_rows} rows, logged {expected.num_rows}")
    order = [("step", "ascending"), ("name", "ascending")]
    got = read.select(expected.column_names).sort_by(order)
    if not got.equals(expected.sort_by(order)):
        raise BenchmarkError("the rows read back differ from the rows logged")


def _check_chart(series: pa.Table, names: Sequence[str], total_points: int) -> None:
    """The chart query covers every series, within ``CHART_MAX_POINTS`` buckets, and every point."""
    per_name = series.group_by("name").aggregate([("count", "sum"), ("name", "count")])
    if sorted(per_name.column("name").to_pylist()) != sorted(names):
        raise BenchmarkError("the chart query did not return one series per metric")
    if max(per_name.column("name_count").to_pylist()) > CHART_MAX_POINTS:
        raise BenchmarkError(f"a chart series has more than {CHART_MAX_POINTS} buckets")
    if sum(per_name.column("count_sum").to_pylist()) != total_points:
        raise BenchmarkError("the chart buckets do not add up to every logged point")


def measure_logprobe(workload: Sequence[dict[str, float]], expected: pa.Table, root: Path) -> LogprobeResult:
    """Log the workload through ``collectors.init`` / ``Run.log`` / ``Run.close`` and read it back.

    Run setup (``init``: writer thread, ``runs`` row, git lookup) happens before the clock starts,
    since a trainer pays it once; ``close()`` is inside the write time because until it returns the
    data is not all in Parquet files.
    """
    run = collectors.init(run_id=RUN_ID, root=root, config={"bench": "write_path"})
    names = list(workload[0])
    gc.collect()
    gc_before = _gc_collections()
    start = time.perf_counter_ns()
    samples = _time_calls(run.log, workload)
    loop_ns = time.perf_counter_ns() - start
    gc_after = _gc_collections()
    run.close()
    write_ns = time.perf_counter_ns() - start

    t0 = time.perf_counter_ns()
    store = storage.Store(root)
    t1 = time.perf_counter_ns()
    rows = store.sql("SELECT name, step, value FROM metrics")
    t2 = time.perf_counter_ns()
    series = storage.metric_series(store, [RUN_ID], names, max_points=CHART_MAX_POINTS)
    t3 = time.perf_counter_ns()
    store.close()

    _check_rows(rows, expected)
    _check_chart(series, names, expected.num_rows)
    bytes_total, files = _bytes_under(root)
    bytes_metrics, metrics_files = _bytes_under(root / "metrics")
    gc_runs = [after - before for before, after in zip(gc_before, gc_after, strict=True)]
    return LogprobeResult(
        latency=Latency.of(samples),
        loop_s=loop_ns / 1e9,
        write_s=write_ns / 1e9,
        store_open_s=(t1 - t0) / 1e9,
        select_s=(t2 - t1) / 1e9,
        read_s=(t2 - t0) / 1e9,
        chart_s=(t3 - t2) / 1e9,
        rows_read=rows.num_rows,
        chart_rows=series.num_rows,
        bytes_total=bytes_total,
        bytes_metrics=bytes_metrics,
        files=files,
        metrics_files=metrics_files,
        gc_gen0=gc_runs[0],
        gc_gen1=gc_runs[1],
        gc_gen2=gc_runs[2],
    )


class ListFloor:
    """The least a Python logger can do: extend three column lists per step, write once at the end.

    It has no durability at all (a crash loses everything) and writes only step, name and value, so
    it is a floor for the per-call cost, not a competitor.
    """

    def __init__(self) -> None:
        self.steps: list[int] = []
        self.names: list[str] = []
        self.values: list[float] = []

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        self.names.extend(metrics)
        self.values.extend(metrics.values())
        self.steps.extend([step] * len(metrics))

    def close(self, path: Path) -> None:
        table = pa.table(
            {
                "step": pa.array(self.steps, pa.int64()),
                "name": pa.array(self.names, pa.string()),
                "value": pa.array(self.values, pa.float64()),
            }
        )
        pq.write_table(table, path, compression=FLOOR_COMPRESSION)


def measure_floor(workload: Sequence[dict[str, float]], expected: pa.Table, root: Path) -> FloorResult:
    """The floor on the same workload, timed the same way as ``measure_logprobe``."""
    floor = ListFloor()
    path = root / "floor.parquet"
    gc.collect()
    start = time.perf_counter_ns()
    samples = _time_calls(floor.log, workload)
    floor.close(path)
    write_ns = time.perf_counter_ns() - start
    _check_rows(pq.read_table(path), expected)
    return FloorResult(latency=Latency.of(samples), write_s=write_ns / 1e9, bytes_total=path.stat().st_size)


def median(results: Sequence[T]) -> T:
    """Field-by-field median of several results of one dataclass type (nested dataclasses too).

    Counts (ints) take the lower median so they stay whole numbers with an even number of repeats.
    """
    first = results[0]
    fields: dict[str, Any] = {}
    for field in dataclasses.fields(first):  # type: ignore[arg-type]
        column = [getattr(result, field.name) for result in results]
        if dataclasses.is_dataclass(column[0]):
            fields[field.name] = median(column)
        elif all(type(value) is int for value in column):
            fields[field.name] = statistics.median_low(column)
        else:
            fields[field.name] = statistics.median(column)
    return type(first)(**fields)


@dataclasses.dataclass(frozen=True)
class Report:
    steps: int
    n_metrics: int
    repeats: int
    command: str
    machine: dict[str, str]
    timer: Latency
    logprobe_runs: list[LogprobeResult]
    floor_runs: list[FloorResult]

    @property
    def logprobe(self) -> LogprobeResult:
        return median(self.logprobe_runs)

    @property
    def floor(self) -> FloorResult:
        return median(self.floor_runs)

    @property
    def points(self) -> int:
        return self.steps * self.n_metrics

    def verdicts(self) -> list[tuple[str, str, str, bool]]:
        """(target, limit, measured, met) for each of the issue's targets."""
        lp = self.logprobe
        return [
            (
                "Run.log p50",
                f"<= {TARGET_P50_US:g} us",
                f"{lp.latency.p50_us:.2f} us",
                lp.latency.p50_us <= TARGET_P50_US,
            ),
            (
                "Run.log p99",
                f"<= {TARGET_P99_US:g} us",
                f"{lp.latency.p99_us:.2f} us",
                lp.latency.p99_us <= TARGET_P99_US,
            ),
            (
                f"read-back of {self.points:,} points",
                f"<= {TARGET_READ_S:g} s",
                f"{lp.read_s:.3f} s",
                lp.read_s <= TARGET_READ_S,
            ),
        ]

    def to_json(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "metrics": self.n_metrics,
            "repeats": self.repeats,
            "points": self.points,
            "command": self.command,
            "machine": self.machine,
            "timer_overhead": dataclasses.asdict(self.timer),
            "logprobe": dataclasses.asdict(self.logprobe),
            "floor": dataclasses.asdict(self.floor),
            "logprobe_runs": [dataclasses.asdict(r) for r in self.logprobe_runs],
            "floor_runs": [dataclasses.asdict(r) for r in self.floor_runs],
            "targets": [
                {"target": t, "limit": limit, "measured": m, "met": met}
                for t, limit, m, met in self.verdicts()
            ],
        }


def run_benchmark(steps: int, n_metrics: int, repeats: int, command: str) -> Report:
    """Alternate logprobe and the floor ``repeats`` times, each in a fresh temp dir.

    Alternating (rather than all logprobe runs, then all floor runs) spreads a noisy neighbour's
    bursts over both sides instead of charging them to one.
    """
    workload = make_workload(steps, n_metrics)
    expected = _expected_table(workload)
    machine = machine_info()
    timer = timer_overhead()
    logprobe_runs: list[LogprobeResult] = []
    floor_runs: list[FloorResult] = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory(prefix="logprobe-bench-") as tmp:
            logprobe_runs.append(measure_logprobe(workload, expected, Path(tmp)))
        with tempfile.TemporaryDirectory(prefix="logprobe-bench-floor-") as tmp:
            floor_runs.append(measure_floor(workload, expected, Path(tmp)))
    return Report(steps, n_metrics, repeats, command, machine, timer, logprobe_runs, floor_runs)


# ---------------------------------------------------------------------------------------- report


def notes_and_machine(notes: list[str]) -> list[str]:
    """The tail of a Markdown report: its notes (if any), then the machine table."""
    lines = ["## Notes", "", *[f"- {n}" for n in notes], ""] if notes else []
    return [
        *lines,
        "## Machine",
        "",
        "| | |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in machine_info().items()],
        "",
    ]


def machine_info() -> dict[str, str]:
    """What a reader needs to compare these numbers with another run of the benchmark."""
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    return {
        "date (UTC)": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "CPU": cpu,
        "cores": f"{os.cpu_count()} (usable by this process: {usable})",
        "load average (1, 5, 15 min) at start": load,
        "OS": platform.platform(),
        "Python": f"{platform.python_implementation()} {platform.python_version()}",
        "pyarrow": pa.__version__,
        "duckdb": duckdb.__version__,
        "numpy": np.__version__,
        "logprobe": f"{logprobe.__version__} (git {_git_commit()})",
        "temp dir": tempfile.gettempdir(),
    }


def _git_commit() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head}{' + uncommitted changes' if dirty else ''}"


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.1f}x" if b > 0 else "n/a"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def render(report: Report) -> str:
    """The Markdown report (also what goes to stdout)."""
    lp, fl, timer = report.logprobe, report.floor, report.timer
    out = [
        "# logprobe write-path benchmark",
        "",
        f"One run, {report.steps:,} steps x {report.n_metrics} scalar metrics = {report.points:,} points "
        f"(Python floats, a fresh pre-built dict per step). Medians of {report.repeats} repeats, each "
        "in a fresh temp-dir data root; logprobe and the floor alternate in one process.",
        "",
        "Command (from the repository root):",
        "",
        "```",
        report.command,
        "```",
        "",
        "## Machine",
        "",
        *_table(["", ""], [[k, v] for k, v in report.machine.items()]),
        "",
        "## Targets",
        "",
        *_table(
            ["target", "limit", "measured (median)", "verdict"],
            [[t, limit, m, "PASS" if met else "MISS"] for t, limit, m, met in report.verdicts()],
        ),
        "",
        "## Results (median of repeats)",
        "",
        *_table(
            ["", "logprobe `Run.log`", "floor: bare pyarrow", "logprobe / floor"],
            [
                [
                    "per-call p50",
                    f"{lp.latency.p50_us:.2f} us",
                    f"{fl.latency.p50_us:.2f} us",
                    _ratio(lp.latency.p50_us, fl.latency.p50_us),
                ],
                [
                    "per-call p99",
                    f"{lp.latency.p99_us:.2f} us",
                    f"{fl.latency.p99_us:.2f} us",
                    _ratio(lp.latency.p99_us, fl.latency.p99_us),
                ],
                [
                    "per-call p99.9",
                    f"{lp.latency.p999_us:.2f} us",
                    f"{fl.latency.p999_us:.2f} us",
                    _ratio(lp.latency.p999_us, fl.latency.p999_us),
                ],
                [
                    "per-call max",
                    f"{lp.latency.max_us:.1f} us",
                    f"{fl.latency.max_us:.1f} us",
                    _ratio(lp.latency.max_us, fl.latency.max_us),
                ],
                [
                    "per-call mean",
                    f"{lp.latency.mean_us:.2f} us",
                    f"{fl.latency.mean_us:.2f} us",
                    _ratio(lp.latency.mean_us, fl.latency.mean_us),
                ],
                [
                    "write time (first call to all in Parquet)",
                    f"{lp.write_s:.3f} s",
                    f"{fl.write_s:.3f} s",
                    _ratio(lp.write_s, fl.write_s),
                ],
                [
                    "bytes on disk",
                    f"{lp.bytes_total:,} ({lp.files} files; metrics table {lp.bytes_metrics:,})",
                    f"{fl.bytes_total:,} (1 file)",
                    _ratio(lp.bytes_total, fl.bytes_total),
                ],
            ],
        ),
        "",
        *_table(
            ["read path (logprobe)", "time"],
            [
                ["`storage.Store(root)` construction", f"{lp.store_open_s * 1e3:.1f} ms"],
                [
                    f"`SELECT name, step, value FROM metrics` ({lp.rows_read:,} rows, all verified)",
                    f"{lp.select_s * 1e3:.1f} ms",
                ],
                ["read-back total (construction + select)", f"{lp.read_s * 1e3:.1f} ms"],
                [
                    f"chart: `metric_series(..., {report.n_metrics} names, max_points={CHART_MAX_POINTS})` "
                    f"({lp.chart_rows:,} rows)",
                    f"{lp.chart_s * 1e3:.1f} ms",
                ],
            ],
        ),
        "",
        "## Every repeat (the spread behind the medians)",
        "",
        *_table(
            [
                "repeat",
                "p50",
                "p99",
                "p99.9",
                "max",
                "write",
                "read-back",
                "chart",
                "floor p50",
                "floor write",
            ],
            [
                [
                    str(i + 1),
                    f"{r.latency.p50_us:.2f} us",
                    f"{r.latency.p99_us:.2f} us",
                    f"{r.latency.p999_us:.2f} us",
                    f"{r.latency.max_us:.0f} us",
                    f"{r.write_s:.3f} s",
                    f"{r.read_s:.3f} s",
                    f"{r.chart_s:.3f} s",
                    f"{f.latency.p50_us:.2f} us",
                    f"{f.write_s:.3f} s",
                ]
                for i, (r, f) in enumerate(zip(report.logprobe_runs, report.floor_runs, strict=True))
            ],
        ),
        "",
        "## Other trackers (quoted, not measured here)",
        "",
        *_table(
            ["tracker", "per-call p50, same workload, same machine kind"],
            [[name, value] for name, value in QUOTED_P50],
        ),
        "",
        "## How to read this",
        "",
        f"- Latency is `time.perf_counter_ns()` around each call; two back-to-back clock reads cost "
        f"{timer.p50_us * 1e3:.0f} ns at p50 (included in every latency above).",
        f"- Garbage collection was enabled, as in a real trainer. Collections during the timed "
        f"logprobe loop (median): gen0 {lp.gc_gen0}, gen1 {lp.gc_gen1}, gen2 {lp.gc_gen2}.",
        "- logprobe's write time includes `Run.close()`, which flushes what the background thread had "
        "not yet written. The writer renames each finished file into place but does not fsync, so "
        "'in Parquet' means in the filesystem (page cache), not yet on stable storage; the same holds "
        "for the floor.",
        f"- The timed logprobe loop itself took {lp.loop_s * 1e3:.0f} ms (median) against the writer's "
        f"1 s background flush interval, and the metrics table ended up in {lp.metrics_files} file(s), "
        "one per flush: when that is 1, no background flush overlapped the timed calls and the "
        "latencies above contain no contention with the flush thread (all of it was in `close()`).",
        "- The floor keeps only step, name and value; logprobe also stores ts, source, rank, worker and "
        "policy_version per row (and `runs`/`events` files), so its bytes are not like for like.",
        "- The read path opens a fresh DuckDB `Store`, which reads every file's footer, then queries "
        "files that the OS has just written and therefore still caches.",
        "",
    ]
    return "\n".join(out)


# ---------------------------------------------------------------------------------------- CLI


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.write_path", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--steps", type=positive_int, default=DEFAULT_STEPS, help="steps to log (default %(default)s)"
    )
    parser.add_argument(
        "--metrics",
        type=positive_int,
        default=DEFAULT_METRICS,
        help="scalar metrics per step (default %(default)s)",
    )
    parser.add_argument(
        "--repeats",
        type=positive_int,
        default=DEFAULT_REPEATS,
        help="repeats to take medians over (default %(default)s)",
    )
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="Markdown report (default bench/results/write_path.md)"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers as JSON here")
    args_list = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(args_list)

    command = shlex.join(["python", "-m", "bench.write_path", *args_list])
    report = run_benchmark(args.steps, args.metrics, args.repeats, command)
    text = render(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report.to_json(), indent=2, allow_nan=False), encoding="utf-8")
    print(text)
    print(f"(written to {args.out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
