"""Side-by-side benchmark: logprobe against real experiment trackers, write path and read path.

``bench/write_path.py`` compares logprobe with a bare-pyarrow floor, and quotes other trackers'
numbers. This script measures those trackers instead of quoting them: every tool logs the same
workload (``make_workload``: one run, ``--metrics`` scalar metrics per step) through its own
per-step call, on this machine, and is then read back with its own reader.

Write path, per tool: the latency of the per-step log call (p50, p99, p99.9, from
``time.perf_counter_ns`` around each call), the wall time from the first call until the tool's
finish/close/flush has returned (the data is then on disk as far as the tool promises), and the
bytes it left on disk. Read path, per tool, on the data it just wrote: (a) every series loaded in
full; (b) the dashboard's downsampled chart query: logprobe's ``storage.metric_series`` (min/max/
last buckets in DuckDB), or for a peer its own reader followed by the same bucketing in numpy,
timed together. Both reads start from a fresh reader handle.

Each tool runs in its own subprocess (``python -m bench.trackers --child TOOL ...``) so that its
imports, background threads, environment variables and global state cannot touch another tool's
numbers. Every read is checked against the logged workload (row counts and values), and a tool
that lost data fails the benchmark. The slowest peer (MLflow's SQLite store, whose async queue
drains at ~20 ms per step here) runs at fewer steps by default (``--peer-steps``); logprobe is
then also measured at that size, so ratios always compare equal sizes.

Run it from the repository root::

    python -m bench.trackers [--steps N] [--big-steps M] [--tools a,b,...] [--out PATH] [--json PATH]
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import glob
import importlib.metadata
import json
import math
import os
import struct
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench import _report
from bench._workload import Latency, ListFloor, bytes_under, make_workload, time_calls

DEFAULT_STEPS = 10_000
DEFAULT_BIG_STEPS = 1_000_000
DEFAULT_METRICS = 20
CHART_MAX_POINTS = 1000
CHILD_TIMEOUT_S = 600
REPO = Path(__file__).resolve().parents[1]
RUN_NAME = "bench-trackers"

TOOLS = ("logprobe", "floor", "wandb", "mlflow-sqlite", "mlflow-file", "tensorboardx", "trackio", "aim")
PEERS = TOOLS[2:]
# Peers far slower than the rest run at fewer steps (ratios are still taken at equal sizes).
DEFAULT_PEER_STEPS = {"mlflow-sqlite": 1_000}

LABELS = {
    "logprobe": "logprobe (`collectors.init` + `Run.log` + `close`)",
    "floor": "floor: bare pyarrow (lists, one Parquet file at the end)",
    "wandb": "W&B offline (`wandb.log`, `finish`)",
    "mlflow-sqlite": "MLflow, SQLite store, async (`log_metrics(synchronous=False)`)",
    "mlflow-file": "MLflow, file store, async (`log_metrics(synchronous=False)`)",
    "tensorboardx": "TensorBoard via tensorboardX (20x `add_scalar`, `close`)",
    "trackio": "Trackio local (`trackio.log`, `finish`)",
    "aim": "Aim (20x `Run.track`, `close`)",
}
READERS = {
    "logprobe": "`storage.Store` + `SELECT name, step, value FROM metrics`; chart: `storage.metric_series`",
    "wandb": "none: W&B has no local reader that returns an offline run's history without a server",
    "mlflow-sqlite": "`MlflowClient.get_metric_history` per metric",
    "mlflow-file": "`MlflowClient.get_metric_history` per metric",
    "tensorboardx": '`EventAccumulator(size_guidance={"scalars": 0})`, `Reload`, `Scalars` per tag',
    "trackio": "`trackio.sqlite_storage.SQLiteStorage.get_logs(project, run)`",
    "aim": "`Run(hash, repo, read_only=True).get_metric(name, Context({})).data.view('val').numpy()`",
}
PACKAGES = {
    "logprobe": ("duckdb", "pyarrow"),
    "floor": ("pyarrow",),
    "wandb": ("wandb",),
    "mlflow-sqlite": ("mlflow-skinny", "sqlalchemy", "alembic"),
    "mlflow-file": ("mlflow-skinny",),
    "tensorboardx": ("tensorboardX", "tensorboard"),
    "trackio": ("trackio",),
    "aim": ("aim", "aimrocks"),
}

# The goals.
GOAL_FLOOR_X = 2.0  # logprobe p50 and p99 within 2x of the bare floor
GOAL_PEER_WRITE_X = 10.0  # ... and at least 10x faster than the fastest peer
GOAL_PEER_READ_X = 5.0  # read path at least 5x faster than the fastest peer

EXIT_LOST_DATA = 3


# ---------------------------------------------------------------------------------------- results


@dataclasses.dataclass
class ToolResult:
    """One tool at one size, measured in its own child process (``None``: not measured)."""

    tool: str
    steps: int
    n_metrics: int
    ok: bool = False
    reason: str = ""  # why it could not run, when not ok
    latency: Latency | None = None
    setup_s: float | None = None  # init / start_run before the clock starts (a trainer pays it once)
    loop_s: float | None = None  # the timed calls alone
    durable_s: float | None = None  # first call until finish/close/flush returned
    bytes_on_disk: int | None = None
    files: int | None = None
    read_full_s: float | None = None
    read_chart_s: float | None = None
    rows_read: int | None = None  # points the full read returned (verified)
    chart_buckets: int | None = None  # buckets over all series
    chart_points: int | None = None  # points the buckets cover (verified = steps x metrics)
    prepare_read_s: float | None = None  # work a reader needs before it can read at all (Aim's index)
    values_exact: bool | None = None
    rows_dropped: int = 0  # rows logprobe's writer counted as dropped (bounded buffer), never silent
    verified: str = ""
    notes: list[str] = dataclasses.field(default_factory=list)
    versions: dict[str, str] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ToolResult:
        fields = dict(data)
        if fields.get("latency") is not None:
            fields["latency"] = Latency(**fields["latency"])
        return cls(**fields)


# ---------------------------------------------------------------------------------------- helpers


def _expected(workload: Sequence[Mapping[str, float]]) -> np.ndarray:
    """The workload as a (steps, metrics) float64 array, columns in ``metric_names`` order."""
    n = len(workload[0])
    flat = np.fromiter((v for metrics in workload for v in metrics.values()), np.float64, len(workload) * n)
    return flat.reshape(len(workload), n)


Series = dict[str, tuple[np.ndarray, np.ndarray]]  # name -> (steps, values)


def check_series(tool: str, series: Series, names: Sequence[str], expected: np.ndarray) -> bool:
    """Every logged point came back exactly once; returns whether every value is bit-exact.

    Values must agree to 1e-6 relative (TensorBoard stores float32); anything else is lost data.
    """
    if sorted(series) != sorted(names):
        missing, extra = set(names) - set(series), set(series) - set(names)
        raise _report.BenchmarkError(
            f"{tool}: series differ from those logged (missing {missing}, extra {extra})"
        )
    steps = expected.shape[0]
    exact = True
    for j, name in enumerate(names):
        got_steps, got_values = series[name]
        got_steps = np.asarray(got_steps, dtype=np.int64)
        got_values = np.asarray(got_values, dtype=np.float64)
        if len(got_steps) != steps or len(got_values) != steps:
            raise _report.BenchmarkError(f"{tool}: {name} read back {len(got_values)} points, logged {steps}")
        order = np.argsort(got_steps, kind="stable")
        if not np.array_equal(got_steps[order], np.arange(steps)):
            raise _report.BenchmarkError(f"{tool}: {name} read back the wrong steps")
        got = got_values[order]
        if not np.allclose(got, expected[:, j], rtol=1e-6, atol=0.0):
            raise _report.BenchmarkError(f"{tool}: {name} read back values that differ from those logged")
        exact = exact and bool(np.array_equal(got, expected[:, j]))
    return exact


def bucket_series(steps: np.ndarray, values: np.ndarray, max_points: int) -> dict[str, np.ndarray]:
    """A peer's chart query after its reader: min/max/last of ``max_points`` equal slices of the steps.

    The same reduction ``storage.metric_series`` does in DuckDB, done the fastest simple way in numpy,
    so that a peer is charged for its reader and not for a slow Python loop of ours.
    """
    steps = np.asarray(steps, dtype=np.int64)
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(steps, kind="stable")
    steps, values = steps[order], values[order]
    lo, span = steps[0], steps[-1] - steps[0] + 1
    idx = (steps - lo) * max_points // span if span > max_points else steps - lo
    starts = np.flatnonzero(np.r_[True, idx[1:] != idx[:-1]])
    ends = np.r_[starts[1:], len(values)]
    return {
        "x": steps[ends - 1],
        "min": np.minimum.reduceat(values, starts),
        "max": np.maximum.reduceat(values, starts),
        "last": values[ends - 1],
        "count": ends - starts,
    }


def _peer_reads(
    tool: str,
    result: ToolResult,
    read: Callable[[], Series],
    names: Sequence[str],
    expected: np.ndarray,
) -> None:
    """Time a peer's full read and its chart query (fresh reader each time), then verify both."""
    t0 = time.perf_counter_ns()
    series = read()
    result.read_full_s = (time.perf_counter_ns() - t0) / 1e9
    t0 = time.perf_counter_ns()
    charts = {name: bucket_series(s, v, CHART_MAX_POINTS) for name, (s, v) in read().items()}
    result.read_chart_s = (time.perf_counter_ns() - t0) / 1e9
    result.values_exact = check_series(tool, series, names, expected)
    result.rows_read = sum(len(v) for _, v in series.values())
    _check_charts(tool, result, charts, names, expected.shape[0])


def _check_charts(
    tool: str,
    result: ToolResult,
    charts: Mapping[str, Mapping[str, np.ndarray]],
    names: Sequence[str],
    steps: int,
) -> None:
    if sorted(charts) != sorted(names):
        raise _report.BenchmarkError(f"{tool}: the chart query did not return one series per metric")
    for name, chart in charts.items():
        if len(chart["count"]) > CHART_MAX_POINTS:
            raise _report.BenchmarkError(
                f"{tool}: chart series {name} has more than {CHART_MAX_POINTS} buckets"
            )
        if int(np.sum(chart["count"])) != steps:
            raise _report.BenchmarkError(f"{tool}: chart buckets of {name} do not cover every step")
    result.chart_buckets = sum(len(c["count"]) for c in charts.values())
    result.chart_points = sum(int(np.sum(c["count"])) for c in charts.values())


def _measure_write(
    result: ToolResult,
    log: Callable[[int, dict[str, float]], Any],
    workload: Sequence[dict[str, float]],
    close: Callable[[], Any],
    data: Path,
) -> None:
    """Time one tool's write path the same way for every tool: a collection first (so no tool pays
    for another's garbage), each per-step call, then ``close`` (the tool's finish/close/flush)
    inside the durable time, since until it returns the data is not all stored; then its bytes."""
    gc.collect()
    start = time.perf_counter_ns()
    samples = time_calls(log, workload)
    loop_ns = time.perf_counter_ns() - start
    close()
    end_ns = time.perf_counter_ns()
    result.latency = Latency.of(samples)
    result.loop_s = loop_ns / 1e9
    result.durable_s = (end_ns - start) / 1e9
    result.bytes_on_disk, result.files = bytes_under(data)


# ---------------------------------------------------------------------------------------- tools
# Each measure_* runs inside a child process, in an empty directory of its own (``data``).


def measure_logprobe(workload: Sequence[dict[str, float]], data: Path, result: ToolResult) -> None:
    """``collectors.init`` / ``Run.log`` / ``Run.close`` exactly as a trainer calls them."""
    import pyarrow.compute as pc

    from logprobe import collectors, storage

    names = list(workload[0])
    t0 = time.perf_counter_ns()
    run = collectors.init(run_id=RUN_NAME, root=data, config={"bench": "trackers"})
    result.setup_s = (time.perf_counter_ns() - t0) / 1e9
    _measure_write(result, run.log, workload, run.close, data)
    dropped = run.writer.stats().rows_dropped

    t0 = time.perf_counter_ns()
    store = storage.Store(data)
    rows = store.sql("SELECT name, step, value FROM metrics")
    result.read_full_s = (time.perf_counter_ns() - t0) / 1e9
    store.close()
    t0 = time.perf_counter_ns()
    store = storage.Store(data)
    chart = storage.metric_series(store, [RUN_NAME], names, max_points=CHART_MAX_POINTS)
    result.read_chart_s = (time.perf_counter_ns() - t0) / 1e9
    store.close()

    logged = len(workload) * len(names)
    if dropped:
        # The writer never blocks the loop: past max_buffer_rows it counts and drops (a dropped_rows
        # event). A tight loop can outrun the flush thread; that is reported, not hidden.
        rate = logged / result.loop_s
        result.notes.append(
            f"the writer's bounded buffer dropped {dropped:,} of {logged:,} rows: this loop logged "
            f"{rate:,.0f} rows/s, faster than the flush thread writes them (a trainer logging 20 "
            "metrics every 100 ms sends 200 rows/s); the drop is counted and recorded as an event"
        )
        if rows.num_rows + dropped != logged:
            raise _report.BenchmarkError(
                f"logprobe: {rows.num_rows:,} read + {dropped:,} dropped != {logged:,} logged"
            )
        result.rows_read, result.rows_dropped, result.chart_buckets = rows.num_rows, dropped, chart.num_rows
        result.verified = "rows read back + rows the writer counted as dropped == rows logged"
        return
    expected = _expected(workload)
    rows = rows.sort_by([("name", "ascending"), ("step", "ascending")])
    series: Series = {}
    for name in names:
        part = rows.filter(pc.equal(rows.column("name"), name))
        series[name] = (part.column("step").to_numpy(), part.column("value").to_numpy())
    result.values_exact = check_series("logprobe", series, names, expected)
    result.rows_read = rows.num_rows
    charts = {}
    for name in names:
        part = chart.filter(pc.equal(chart.column("name"), name))
        charts[name] = {"count": part.column("count").to_numpy()}
    _check_charts("logprobe", result, charts, names, len(workload))
    result.verified = "every row read back and compared with the logged value"


def measure_floor(workload: Sequence[dict[str, float]], data: Path, result: ToolResult) -> None:
    """The bare-pyarrow floor ``bench/write_path.py`` measures (``ListFloor``), timed the same way."""
    import pyarrow.parquet as pq

    floor = ListFloor()
    path = data / "floor.parquet"
    result.setup_s = 0.0
    _measure_write(result, floor.log, workload, lambda: floor.close(path), data)
    rows = pq.ParquetFile(path).metadata.num_rows
    if rows != len(workload) * len(workload[0]):
        raise _report.BenchmarkError(f"floor: wrote {rows} rows, logged {len(workload) * len(workload[0])}")
    result.rows_read = rows
    result.verified = "row count from the Parquet footer (no read path: the floor is a write floor only)"


def measure_wandb(workload: Sequence[dict[str, float]], data: Path, result: ToolResult) -> None:
    """W&B in offline mode: ``wandb.log(metrics, step=step)``, then ``wandb.finish()``."""
    os.environ.update(
        WANDB_MODE="offline",
        WANDB_SILENT="true",
        WANDB_CONSOLE="off",
        WANDB_DISABLE_GIT="true",
        WANDB_DISABLE_CODE="true",
        WANDB_CONFIG_DIR=str(data / "config"),
        WANDB_CACHE_DIR=str(data / "cache"),
        WANDB_DATA_DIR=str(data / "data"),
    )
    import wandb

    t0 = time.perf_counter_ns()
    settings = wandb.Settings(x_disable_stats=True, console="off", save_code=False, disable_git=True)
    wandb.init(dir=data, project="bench", name=RUN_NAME, settings=settings)
    result.setup_s = (time.perf_counter_ns() - t0) / 1e9
    log = wandb.log
    _measure_write(result, lambda step, metrics: log(metrics, step=step), workload, wandb.finish, data)

    # Not a read path (not timed, not reported as one): W&B's run file is parsed here only to check
    # that nothing was lost.
    files = glob.glob(str(data / "wandb" / "offline-run-*" / "run-*.wandb"))
    if len(files) != 1:
        raise _report.BenchmarkError(f"wandb: expected one offline run file, found {files}")
    # wandb-core (a separate process) can still be appending the last records when finish()
    # returns on a loaded machine: give the file up to 10 s to settle before calling rows lost.
    deadline = time.monotonic() + 10.0
    while True:
        series = _wandb_history(Path(files[0]))
        complete = all(len(series.get(name, ((), ()))[0]) == len(workload) for name in workload[0])
        if complete or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    result.values_exact = check_series("wandb", series, list(workload[0]), _expected(workload))
    result.rows_read = sum(len(v) for _, v in series.values())
    result.verified = (
        "history records parsed from the offline `.wandb` file (LevelDB log framing + wandb's own "
        "`Record` protobuf); untimed, a check only"
    )
    result.notes.append(READERS["wandb"] + "; the read path is not measured")


def _wandb_history(path: Path) -> Series:
    """History rows of an offline ``.wandb`` file: LevelDB log records of ``wandb_internal_pb2.Record``."""
    from wandb.proto import wandb_internal_pb2

    raw = path.read_bytes()
    if raw[:4] != b":W&B":
        raise _report.BenchmarkError(f"wandb: {path} is not a W&B run file")
    block, pos, pending, records = 32768, 7, b"", []
    while pos + 7 <= len(raw):
        left = block - pos % block
        if left < 7:  # block trailer padding
            pos += left
            continue
        _crc, length, kind = struct.unpack_from("<IHB", raw, pos)
        chunk = raw[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 1:  # full
            records.append(chunk)
        elif kind == 2:  # first
            pending = chunk
        elif kind == 3:  # middle
            pending += chunk
        elif kind == 4:  # last
            records.append(pending + chunk)
    steps: dict[str, list[int]] = {}
    values: dict[str, list[float]] = {}
    for data in records:
        record = wandb_internal_pb2.Record()
        record.ParseFromString(data)
        if record.WhichOneof("record_type") != "history":
            continue
        items = {item.key or "/".join(item.nested_key): item.value_json for item in record.history.item}
        step = int(items["_step"])
        for key, value in items.items():
            if not key.startswith("_"):
                steps.setdefault(key, []).append(step)
                values.setdefault(key, []).append(float(json.loads(value)))
    return {name: (np.asarray(steps[name]), np.asarray(values[name])) for name in steps}


def _measure_mlflow(
    workload: Sequence[dict[str, float]], data: Path, result: ToolResult, tracking_uri: str
) -> None:
    """``mlflow.log_metrics(metrics, step=step, synchronous=False)`` inside ``mlflow.start_run()``.

    ``end_run`` waits for the async queue to drain, so the durable time includes all of it.
    """
    import logging

    logging.getLogger("mlflow").setLevel(logging.ERROR)
    logging.getLogger("alembic").setLevel(logging.ERROR)
    import mlflow
    from mlflow.tracking import MlflowClient

    t0 = time.perf_counter_ns()
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment("bench")
    run = mlflow.start_run(run_name=RUN_NAME)
    run_id = run.info.run_id
    result.setup_s = (time.perf_counter_ns() - t0) / 1e9
    log_metrics = mlflow.log_metrics

    def log(step: int, metrics: dict[str, float]) -> None:
        log_metrics(metrics, step=step, synchronous=False)

    def close() -> None:
        mlflow.flush_async_logging()
        mlflow.end_run()

    _measure_write(result, log, workload, close, data)
    names = list(workload[0])

    def read() -> Series:
        client = MlflowClient(tracking_uri=tracking_uri)
        out: Series = {}
        for name in names:
            history = client.get_metric_history(run_id, name)
            out[name] = (np.array([m.step for m in history]), np.array([m.value for m in history]))
        return out

    _peer_reads(result.tool, result, read, names, _expected(workload))
    result.verified = "every point read back with the tool's reader and compared with the logged value"


def measure_mlflow_sqlite(workload: Sequence[dict[str, float]], data: Path, result: ToolResult) -> None:
    _measure_mlflow(workload, data, result, f"sqlite:///{data}/mlflow.db")
    result.notes.append("store creation (MLflow's schema migrations) is setup, outside the timings")


def measure_mlflow_file(workload: Sequence[dict[str, float]], data: Path, result: ToolResult) -> None:
    """MLflow 3 refuses the file store unless ``MLFLOW_ALLOW_FILE_STORE=true`` (maintenance mode)."""
    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    _measure_mlflow(workload, data, result, (data / "mlruns").as_uri())
    result.notes.append(
        "MLflow 3 refuses the file store by default ('in maintenance mode ... migrate to a database "
        "backend'); measured with its opt-out `MLFLOW_ALLOW_FILE_STORE=true`"
    )


def measure_tensorboardx(workload: Sequence[dict[str, float]], data: Path, result: ToolResult) -> None:
    """tensorboardX's ``SummaryWriter``: one ``add_scalar`` per metric (its API has no dict of scalars
    in one event; ``add_scalars`` writes one event file per tag), ``close()`` at the end."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboardX import SummaryWriter

    t0 = time.perf_counter_ns()
    writer = SummaryWriter(logdir=str(data))
    result.setup_s = (time.perf_counter_ns() - t0) / 1e9
    add_scalar = writer.add_scalar

    def log(step: int, metrics: dict[str, float]) -> None:
        for name, value in metrics.items():
            add_scalar(name, value, step)

    _measure_write(result, log, workload, writer.close, data)
    names = list(workload[0])

    def read() -> Series:
        acc = EventAccumulator(str(data), size_guidance={"scalars": 0})  # 0: keep every point
        acc.Reload()
        out: Series = {}
        for name in names:
            events = acc.Scalars(name)
            out[name] = (np.array([e.step for e in events]), np.array([e.value for e in events]))
        return out

    _peer_reads("tensorboardx", result, read, names, _expected(workload))
    result.verified = "every point read back with the tool's reader and compared with the logged value"
    result.notes.append("`add_scalar` stores float32 (`simple_value`): values agree to 1e-6, not bit-exact")


def measure_trackio(workload: Sequence[dict[str, float]], data: Path, result: ToolResult) -> None:
    """Trackio, local only: ``trackio.log(metrics, step=step)``, ``trackio.finish()``.

    ``TRACKIO_DIR`` is read at import, so it is set first; CPU/GPU system metrics are turned off so
    that Trackio writes only the workload, as the other tools do.
    """
    os.environ["TRACKIO_DIR"] = str(data)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import trackio
    from trackio.sqlite_storage import SQLiteStorage

    t0 = time.perf_counter_ns()
    trackio.init(project="bench", name=RUN_NAME, auto_log_cpu=False, auto_log_gpu=False)
    result.setup_s = (time.perf_counter_ns() - t0) / 1e9
    log = trackio.log
    _measure_write(result, lambda step, metrics: log(metrics, step=step), workload, trackio.finish, data)
    names = list(workload[0])

    def read() -> Series:
        logs = SQLiteStorage.get_logs("bench", RUN_NAME)
        steps = np.array([row["step"] for row in logs])
        return {name: (steps, np.array([row[name] for row in logs])) for name in names}

    _peer_reads("trackio", result, read, names, _expected(workload))
    result.verified = "every point read back with the tool's reader and compared with the logged value"


def measure_aim(workload: Sequence[dict[str, float]], data: Path, result: ToolResult) -> None:
    """Aim: ``Run.track(value, name=..., step=step)`` per metric, ``Run.close()``.

    A finished run is not readable until Aim's index manager (the part of ``aim up`` that watches
    the repo) has indexed it; that indexing is timed separately (``prepare_read_s``), not as a read.
    """
    from aim import Repo, Run
    from aim.sdk.index_manager import RepoIndexManager
    from aim.storage.context import Context

    t0 = time.perf_counter_ns()
    run = Run(
        repo=str(data),
        experiment="bench",
        system_tracking_interval=None,
        log_system_params=False,
        capture_terminal_logs=False,
    )
    run_hash = run.hash
    result.setup_s = (time.perf_counter_ns() - t0) / 1e9
    track = run.track

    def log(step: int, metrics: dict[str, float]) -> None:
        for name, value in metrics.items():
            track(value, name=name, step=step)

    _measure_write(result, log, workload, run.close, data)
    del run

    t0 = time.perf_counter_ns()
    RepoIndexManager.get_index_manager(Repo(str(data))).index(run_hash)
    result.prepare_read_s = (time.perf_counter_ns() - t0) / 1e9
    names = list(workload[0])

    def read() -> Series:
        reader = Run(run_hash, repo=Repo(str(data)), read_only=True)
        out: Series = {}
        for name in names:
            metric = reader.get_metric(name, Context({}))
            if metric is None:
                raise _report.BenchmarkError(f"aim: metric {name} not found")
            steps, (values,) = metric.data.view("val").numpy()
            out[name] = (steps, values)
        return out

    _peer_reads("aim", result, read, names, _expected(workload))
    result.verified = "every point read back with the tool's reader and compared with the logged value"
    result.notes.append(
        "a closed run is invisible to readers until Aim's index manager indexes it (done by `aim up` in "
        "the background); that indexing is reported apart, not in the read times"
    )


MEASURES: dict[str, Callable[[Sequence[dict[str, float]], Path, ToolResult], None]] = {
    "logprobe": measure_logprobe,
    "floor": measure_floor,
    "wandb": measure_wandb,
    "mlflow-sqlite": measure_mlflow_sqlite,
    "mlflow-file": measure_mlflow_file,
    "tensorboardx": measure_tensorboardx,
    "trackio": measure_trackio,
    "aim": measure_aim,
}


def versions(tool: str) -> dict[str, str]:
    out = {}
    for package in PACKAGES[tool]:
        try:
            out[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            out[package] = "not installed"
    return out


def child(tool: str, steps: int, n_metrics: int, data: Path, result_path: Path) -> int:
    """Measure one tool in this (fresh) process and write its ``ToolResult`` as JSON.

    A tool that cannot be imported or crashes is reported with the reason; lost data exits with
    ``EXIT_LOST_DATA``, which fails the whole benchmark for logprobe and the floor and is reported
    as the peer's result for a peer.
    """
    result = ToolResult(tool, steps, n_metrics, versions=versions(tool))
    workload = make_workload(steps, n_metrics)
    warnings.simplefilter("ignore")
    code = 0
    try:
        MEASURES[tool](workload, data, result)
        result.ok = True
    except _report.BenchmarkError as exc:
        result.reason = f"LOST DATA: {exc}"
        code = EXIT_LOST_DATA
    except ImportError as exc:
        result.reason = f"not installed ({exc}); pip install -r requirements-bench.txt"
    except Exception as exc:  # any crash of a peer is reported, never dropped
        last = traceback.format_exc().strip().splitlines()[-1]
        result.reason = f"{type(exc).__name__} while measuring: {last}"
        traceback.print_exc()
    result_path.write_text(json.dumps(dataclasses.asdict(result)), encoding="utf-8")
    return code


OWN_TOOLS = ("logprobe", "floor")  # data lost by these fails the benchmark


def run_child(tool: str, steps: int, n_metrics: int) -> ToolResult:
    """One tool at one size, in a subprocess with an empty temp directory of its own."""
    with tempfile.TemporaryDirectory(prefix=f"logprobe-bench-{tool}-") as tmp:
        data, result_path = Path(tmp) / "data", Path(tmp) / "result.json"
        data.mkdir()
        command = [sys.executable, "-m", "bench.trackers", "--child", tool]
        command += [f"--steps={steps}", f"--metrics={n_metrics}", f"--data-dir={data}"]
        command += [f"--result={result_path}"]
        try:
            proc = subprocess.run(
                command, cwd=REPO, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S, check=False
            )
        except subprocess.TimeoutExpired:
            return ToolResult(tool, steps, n_metrics, reason=f"timed out after {CHILD_TIMEOUT_S} s")
        lost_own = proc.returncode == EXIT_LOST_DATA and tool in OWN_TOOLS
        if lost_own or not result_path.exists():
            reason = result_path.read_text(encoding="utf-8") if result_path.exists() else ""
            raise _report.BenchmarkError(
                f"{tool} at {steps} steps: exit {proc.returncode}\n{reason}\n{proc.stderr[-3000:]}"
            )
        # A peer that loses points (MLflow's async file store has dropped one of 4,000 here, once)
        # is a finding about the peer: reported with its reason, not a failure of the benchmark.
        return ToolResult.from_json(json.loads(result_path.read_text(encoding="utf-8")))


# ---------------------------------------------------------------------------------------- report


@dataclasses.dataclass
class Report:
    steps: int
    big_steps: int
    n_metrics: int
    tools: list[str]
    peer_steps: dict[str, int]
    command: str
    machine: dict[str, str]
    results: list[ToolResult] = dataclasses.field(default_factory=list)
    wall_s: float = 0.0

    def get(self, tool: str, steps: int) -> ToolResult | None:
        for result in self.results:
            if result.tool == tool and result.steps == steps:
                return result
        return None

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["goals"] = [
            {"goal": goal, "measured": measured, "met": met} for goal, measured, met in goals(self)
        ]
        return data


def run_benchmark(
    steps: int,
    big_steps: int,
    n_metrics: int,
    tools: Sequence[str],
    peer_steps: Mapping[str, int],
    command: str,
) -> Report:
    """logprobe and the floor at every size a peer runs at (and at ``big_steps``), each peer once."""
    started = time.perf_counter()
    sizes = {tool: min(peer_steps.get(tool, steps), steps) for tool in tools if tool in PEERS}
    report = Report(steps, big_steps, n_metrics, list(tools), sizes, command, _report.machine_info())
    base_sizes = sorted({steps, *sizes.values()}, reverse=True)
    jobs = [(tool, size) for size in base_sizes for tool in ("logprobe", "floor") if tool in tools]
    jobs += [(tool, sizes[tool]) for tool in tools if tool in PEERS]
    if big_steps not in base_sizes:
        jobs += [(tool, big_steps) for tool in ("logprobe", "floor") if tool in tools]
    for tool, size in jobs:
        t0 = time.perf_counter()
        result = run_child(tool, size, n_metrics)
        report.results.append(result)
        status = "ok" if result.ok else f"cannot run here: {result.reason}"
        print(
            f"[{tool} @ {size:,} steps: {time.perf_counter() - t0:.0f} s, {status}]",
            file=sys.stderr,
            flush=True,
        )
    report.wall_s = time.perf_counter() - started
    return report


def _us(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.2f} us" if value < 100 else f"{value:,.0f} us"


def _s(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value * 1e3:,.1f} ms" if value < 10 else f"{value:,.1f} s"


def _x(a: float | None, b: float | None) -> str:
    if a is None or b is None or b <= 0:
        return "n/a"
    ratio = a / b
    return f"{ratio:,.0f}x" if ratio >= 100 else f"{ratio:,.1f}x" if ratio >= 10 else f"{ratio:.2f}x"


def _peer_ratios(report: Report, key: Callable[[ToolResult], float | None]) -> list[tuple[str, float]]:
    """(peer, peer / logprobe) at equal sizes, for every peer that ran and has the number."""
    out = []
    for tool in report.tools:
        if tool not in PEERS:
            continue
        peer = report.get(tool, report.peer_steps[tool])
        ours = report.get("logprobe", report.peer_steps[tool])
        if peer is None or ours is None or not peer.ok or not ours.ok:
            continue
        a, b = key(peer), key(ours)
        if a is not None and b is not None and b > 0:
            out.append((tool, a / b))
    return out


def _versus(tool: str, ratio: float) -> str:
    """How the fastest peer compares, worded the right way round whichever side is faster."""
    if ratio >= 1:
        return f"fastest peer {tool} is {ratio:,.1f}x slower than logprobe"
    return f"fastest peer {tool} is {1 / ratio:,.1f}x FASTER than logprobe"


def _fastest_peer(
    goal: str, ratios: Sequence[tuple[str, float]], limit: float, nobody: str
) -> tuple[str, str, bool | None]:
    """A goal against the fastest peer (the smallest peer / logprobe ratio): met when even that
    peer is ``limit`` times slower; ``None`` with ``nobody`` when no peer has the number."""
    if not ratios:
        return goal, nobody, None
    tool, ratio = min(ratios, key=lambda item: item[1])
    return goal, _versus(tool, ratio), ratio >= limit


def goals(report: Report) -> list[tuple[str, str, bool | None]]:
    """(goal, what was measured, met) for the issue's goals; ``None``: could not be judged."""
    out: list[tuple[str, str, bool | None]] = []
    lp, fl = report.get("logprobe", report.steps), report.get("floor", report.steps)
    for pct in ("p50", "p99"):

        def key(r: ToolResult, pct: str = pct) -> float | None:
            return None if r.latency is None else getattr(r.latency, f"{pct}_us")

        if lp and fl and lp.ok and fl.ok:
            ratio = key(lp) / key(fl)  # type: ignore[operator]
            out.append(
                (
                    f"logprobe {pct} within {GOAL_FLOOR_X:g}x of the bare floor",
                    f"{_us(key(lp))} vs {_us(key(fl))}: {ratio:.2f}x",
                    ratio <= GOAL_FLOOR_X,
                )
            )
        else:
            out.append((f"logprobe {pct} within {GOAL_FLOOR_X:g}x of the bare floor", "not measured", None))
        goal = f"logprobe {pct} at least {GOAL_PEER_WRITE_X:g}x faster than the fastest peer"
        out.append(_fastest_peer(goal, _peer_ratios(report, key), GOAL_PEER_WRITE_X, "no peer ran"))
    for label, attr in (("full load", "read_full_s"), ("chart query", "read_chart_s")):
        ratios = _peer_ratios(report, lambda r, attr=attr: getattr(r, attr))
        goal = f"read path ({label}) at least {GOAL_PEER_READ_X:g}x faster than the fastest peer"
        out.append(_fastest_peer(goal, ratios, GOAL_PEER_READ_X, "no peer with a reader ran"))
    return out


def render(report: Report) -> str:
    """The Markdown report (also printed to stdout)."""
    lp_base = report.get("logprobe", report.steps)
    floor_base = report.get("floor", report.steps)
    out = [
        "# Trackers benchmark: logprobe against W&B, MLflow, TensorBoard, Trackio and Aim",
        "",
        f"One run, {report.n_metrics} scalar metrics per step (`make_workload`: a fresh dict of Python "
        f"floats per step, built before timing), {report.steps:,} steps unless a row says otherwise. "
        "Each tool runs in its own subprocess with an empty temp directory; the per-step call is timed "
        "with `time.perf_counter_ns`; every read-back is compared with the logged values.",
        "",
        *_report.command_section(report.command),
        f"Whole benchmark wall time: {report.wall_s:,.0f} s.",
        "",
        "## Goals",
        "",
        *_report.markdown_table(
            ["goal", "measured (equal sizes)", "verdict"],
            [
                [goal, measured, "met" if met else "MISSED" if met is False else "n/a"]
                for goal, measured, met in goals(report)
            ],
        ),
        "",
        "## Write path",
        "",
        "Per-step call latency; *durable* = first call until finish/close/flush returned. Ratios are the "
        "tool's p50 and p99 over logprobe's at the same number of steps; for logprobe, over the floor.",
        "",
    ]
    rows = []
    for r in report.results:
        if r.steps == report.big_steps and report.big_steps != report.steps:
            continue
        if not r.ok or r.latency is None:
            continue
        ours = report.get("logprobe", r.steps)
        ref = report.get("floor", r.steps) if r.tool == "logprobe" else ours
        if r.tool == "floor":
            ratio = "(the floor)"
        elif ref is None or ref.latency is None:
            ratio = "n/a"
        else:
            vs = "floor" if r.tool == "logprobe" else "logprobe"
            p50 = _x(r.latency.p50_us, ref.latency.p50_us)
            ratio = f"{p50}, {_x(r.latency.p99_us, ref.latency.p99_us)} vs {vs}"
        rows.append(
            [
                LABELS[r.tool],
                f"{r.steps:,}",
                _us(r.latency.p50_us),
                _us(r.latency.p99_us),
                _us(r.latency.p999_us),
                _s(r.durable_s),
                f"{(r.bytes_on_disk or 0) / 1e6:,.2f} MB ({r.files} files)",
                ratio,
            ]
        )
    out += _report.markdown_table(
        ["tool", "steps", "p50", "p99", "p99.9", "durable wall time", "on disk", "p50, p99 ratio"], rows
    )
    out += [
        "",
        "## Read path",
        "",
        "Full load: every series, all points, from a fresh reader. Chart query: the dashboard's "
        f"downsampled chart of all {report.n_metrics} series ({CHART_MAX_POINTS} min/max/last buckets each): "
        "logprobe's `storage.metric_series`, or the peer's reader plus numpy bucketing, timed together.",
        "",
    ]
    rows = []
    for r in report.results:
        if r.tool == "floor" or (r.steps == report.big_steps and report.big_steps != report.steps):
            continue
        if not r.ok:
            continue
        ours = report.get("logprobe", r.steps)
        if r.read_full_s is None:
            rows.append([LABELS[r.tool], f"{r.steps:,}", "n/a", "n/a", "n/a", READERS.get(r.tool, "")])
            continue
        ratio = (
            "1x"
            if r.tool == "logprobe"
            else f"{_x(r.read_full_s, ours.read_full_s if ours else None)}, "
            f"{_x(r.read_chart_s, ours.read_chart_s if ours else None)}"
        )
        reader = READERS.get(r.tool, "")
        if r.prepare_read_s is not None:
            reader += f" (indexing first: {_s(r.prepare_read_s)}, not included)"
        rows.append(
            [
                LABELS[r.tool],
                f"{r.steps:,}",
                f"{_s(r.read_full_s)} ({r.rows_read:,} points)",
                f"{_s(r.read_chart_s)} ({r.chart_buckets:,} buckets)",
                ratio,
                reader,
            ]
        )
    out += _report.markdown_table(
        ["tool", "steps", "full load", "chart query", "ratio to logprobe (full, chart)", "reader"], rows
    )

    big = report.get("logprobe", report.big_steps)
    big_floor = report.get("floor", report.big_steps)
    if report.big_steps != report.steps and big is not None:
        out += ["", f"## logprobe at {report.big_steps:,} steps", ""]
        if big.ok and big.latency is not None:
            fl = big_floor.latency if big_floor is not None and big_floor.ok else None
            out += _report.markdown_table(
                ["measure", "logprobe", "floor", "logprobe / floor"],
                [
                    ["per-call p50", _us(big.latency.p50_us), _us(fl.p50_us if fl else None),
                     _x(big.latency.p50_us, fl.p50_us if fl else None)],
                    ["per-call p99", _us(big.latency.p99_us), _us(fl.p99_us if fl else None),
                     _x(big.latency.p99_us, fl.p99_us if fl else None)],
                    ["per-call p99.9", _us(big.latency.p999_us), _us(fl.p999_us if fl else None),
                     _x(big.latency.p999_us, fl.p999_us if fl else None)],
                    ["durable wall time", _s(big.durable_s), _s(big_floor.durable_s if big_floor else None),
                     _x(big.durable_s, big_floor.durable_s if big_floor else None)],
                    ["on disk", f"{(big.bytes_on_disk or 0) / 1e6:,.1f} MB",
                     f"{(big_floor.bytes_on_disk or 0) / 1e6:,.1f} MB" if big_floor else "n/a", ""],
                    [f"full load ({big.rows_read:,} points, verified)", _s(big.read_full_s), "", ""],
                    [f"chart query ({big.chart_buckets:,} buckets)", _s(big.read_chart_s), "", ""],
                ],
            )  # fmt: skip
        else:
            out.append(f"cannot run here: {big.reason}")

    out += ["", "## Tools that could not run here", ""]
    failed = [r for r in report.results if not r.ok]
    if failed:
        out += [f"- {LABELS[r.tool]} at {r.steps:,} steps: cannot run here: {r.reason}" for r in failed]
    else:
        out.append("- none: every tool ran")
    missing = [tool for tool in TOOLS if tool not in report.tools]
    if missing:
        out.append(f"- not selected with `--tools`: {', '.join(missing)}")

    out += ["", "## Notes", ""]
    reduced = [(tool, size) for tool, size in report.peer_steps.items() if size != report.steps]
    for tool, size in reduced:
        out.append(
            f"- {LABELS[tool]} ran at {size:,} steps instead of {report.steps:,} "
            f"(`--peer-steps {tool}={size}`): it is far slower; logprobe and the floor were measured at "
            "that size too, and its ratios use them."
        )
    for r in report.results:
        for note in r.notes:
            out.append(f"- {r.tool}: {note}.")
        if r.ok and r.verified:
            out.append(
                f"- {r.tool} @ {r.steps:,} steps, checked: {r.verified}"
                + ("" if r.values_exact is None else f" (bit-exact: {'yes' if r.values_exact else 'no'})")
                + (f"; setup before timing {_s(r.setup_s)}" if r.setup_s else "")
                + "."
            )
    if lp_base and floor_base and lp_base.ok and floor_base.ok:
        out.append(
            f"- logprobe's timed loop took {_s(lp_base.loop_s)} of its {_s(lp_base.durable_s)} durable time "
            f"at {report.steps:,} steps; the floor's {_s(floor_base.loop_s)} of {_s(floor_base.durable_s)}."
        )
    out += [
        "- No tool fsyncs the metric data itself except through SQLite (MLflow's SQLite store, Trackio), "
        "so 'durable' means in the filesystem when close/finish returned.",
        "- The machine is small and shared; one run per tool, no repeats: treat differences under ~2x "
        "as noise.",
        "",
        "## Versions",
        "",
    ]
    seen: dict[str, str] = {}
    for r in report.results:
        seen.update(r.versions)
    out += [f"- {k}: {v}" for k, v in report.machine.items()]
    out += [
        f"- {package}: {version}"
        for package, version in sorted(seen.items())
        if package not in report.machine
    ]
    out.append("")
    return "\n".join(out)


# ---------------------------------------------------------------------------------------- CLI


def _peer_steps(text: str) -> tuple[str, int]:
    tool, _, size = text.partition("=")
    if tool not in PEERS:
        raise argparse.ArgumentTypeError(f"unknown peer {tool!r}; choose from {', '.join(PEERS)}")
    return tool, _report.positive_int(size)


def _tools(text: str) -> list[str]:
    tools = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in tools if t not in TOOLS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown tools {unknown}; choose from {', '.join(TOOLS)}")
    return [t for t in TOOLS if t in tools]


def main(argv: Sequence[str] | None = None) -> int:
    parser = _report.benchmark_parser("trackers", __doc__)
    parser.add_argument(
        "--steps", type=_report.positive_int, default=DEFAULT_STEPS, help="default %(default)s"
    )
    _report.add_count(parser, "--big-steps", DEFAULT_BIG_STEPS, "logprobe only")
    parser.add_argument(
        "--metrics", type=_report.positive_int, default=DEFAULT_METRICS, help="default %(default)s"
    )
    parser.add_argument("--tools", type=_tools, default=list(TOOLS), help=f"comma list of {','.join(TOOLS)}")
    parser.add_argument(
        "--peer-steps",
        type=_peer_steps,
        action="append",
        default=[],
        metavar="TOOL=N",
        help="run a slow peer at N steps (capped at --steps); default "
        + ", ".join(f"{k}={v}" for k, v in DEFAULT_PEER_STEPS.items()),
    )
    parser.add_argument("--child", choices=TOOLS, help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args, command = _report.parse_command(parser, argv)

    if args.child:
        return child(args.child, args.steps, args.metrics, args.data_dir, args.result)

    if "floor" in args.tools and "logprobe" not in args.tools:
        parser.error("the floor is only a reference for logprobe; select logprobe too")
    peer_steps = {**DEFAULT_PEER_STEPS, **dict(args.peer_steps)}
    report = run_benchmark(args.steps, args.big_steps, args.metrics, args.tools, peer_steps, command)
    _check_numbers(report)
    return _report.finish(args, render(report), report.to_json())


def _check_numbers(report: Report) -> None:
    """Every measured number is positive and finite (a zero or NaN means the measurement broke)."""
    for r in report.results:
        if not r.ok:
            continue
        numbers = dict(dataclasses.asdict(r.latency)) if r.latency else {}
        for name in ("loop_s", "durable_s", "bytes_on_disk", "read_full_s", "read_chart_s", "rows_read"):
            value = getattr(r, name)
            if value is not None:
                numbers[name] = value
        for name, value in numbers.items():
            if not (math.isfinite(value) and value > 0):
                raise _report.BenchmarkError(f"{r.tool} @ {r.steps}: {name} = {value}")
        if r.rows_read is not None and r.rows_read + r.rows_dropped != r.steps * r.n_metrics:
            raise _report.BenchmarkError(f"{r.tool} @ {r.steps}: read back {r.rows_read} points")


if __name__ == "__main__":
    sys.exit(main())
