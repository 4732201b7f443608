"""Chart-path benchmark: how fast the dashboard gets a long run's chart on screen, and keeps it live.

A person opens the Metrics page on a run of ``--steps`` steps with ``--metrics`` scalar metrics
(written by logprobe's real Writer, so the files are what a trainer leaves behind). Two numbers:

  (a) time to first chart data: a fresh ``Store`` over the root plus the first chart's downsampled
      series (``LiveSeries.update``, the page's own path: min/max/last buckets of one metric);
  (b) per-refresh cost while live: one more step is logged and flushed, and the chart's series is
      brought up to date (``LiveSeries.update`` reads only the new file).

The same data is read the way two trackers' own readers do it, in the same process, on the same
machine: TensorBoard's ``EventAccumulator`` (``Reload`` then ``Scalars``; it is incremental, so its
refresh is a ``Reload`` of the appended events) over an event file with one scalar event per value
(what ``add_scalar`` writes), and MLflow's ``MlflowClient.get_metric_history`` over a SQLite
tracking store (it has no incremental read, so its refresh reads the history again). Writing 20M
values into those stores takes many minutes here, so the peers run at ``--peer-steps`` and logprobe
is measured at both sizes: ratios compare equal sizes, and logprobe's full-size numbers are checked
against the issue's targets (first chart under 300 ms, refresh under 50 ms).

Run it from the repository root: ``python -m bench.chart_path [--steps N] [--peer-steps M]``.
"""

from __future__ import annotations

import json
import logging
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from bench import _report
from logprobe import storage

DEFAULT_STEPS = 1_000_000
DEFAULT_PEER_STEPS = 20_000
DEFAULT_METRICS = 20
DEFAULT_REFRESHES = 15
RUN_ID = "bench-chart"
CHART_METRIC = "mismatch/k3"
MAX_POINTS = 600  # what the Metrics page asks for
TARGET_FIRST_MS = 300.0
TARGET_REFRESH_MS = 50.0


def metric_names(count: int) -> list[str]:
    return [CHART_METRIC, *(f"train/metric_{i:02d}" for i in range(count - 1))]


@dataclass
class Result:
    tool: str
    steps: int
    first_ms: float | None = None
    refresh_ms: float | None = None  # median over refreshes
    refresh_p90_ms: float | None = None
    write_s: float | None = None  # building the store (not part of the comparison)
    points: int | None = None  # points of the chart metric the reader returned
    note: str = ""


@dataclass
class Report:
    steps: int
    peer_steps: int
    n_metrics: int
    refreshes: int
    machine: dict[str, str]
    results: list[Result] = field(default_factory=list)


def _values(steps: int, n_metrics: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.lognormal(-7, 1, size=(steps, n_metrics))


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1e3


def _refreshes(
    n: int, append: Callable[[int], None], read: Callable[[], int], first_step: int
) -> list[float]:
    times = []
    for i in range(n):
        append(first_step + i)
        start = time.perf_counter()
        read()
        times.append(_ms(start))
    return times


def _summarise(result: Result, first_ms: float, times: list[float], points: int) -> Result:
    result.first_ms = first_ms
    result.refresh_ms = statistics.median(times)
    result.refresh_p90_ms = float(np.percentile(times, 90))
    result.points = points
    return result


# ------------------------------------------------------------------------------------- logprobe


def measure_logprobe(root: Path, steps: int, n_metrics: int, refreshes: int) -> Result:
    names = metric_names(n_metrics)
    values = _values(steps, n_metrics)
    result = Result("logprobe", steps)
    start = time.perf_counter()
    with storage.Writer(root) as writer:
        for step in range(steps):
            writer.log_metrics(RUN_ID, step, dict(zip(names, values[step].tolist(), strict=True)))
    result.write_s = time.perf_counter() - start

    start = time.perf_counter()
    store = storage.Store(root)
    live = storage.LiveSeries([RUN_ID], [CHART_METRIC], max_points=MAX_POINTS)
    live.update(store)
    first = live.table()
    first_ms = _ms(start)
    if first.num_rows == 0 or first.column("count").to_numpy().sum() != steps:
        raise RuntimeError(f"logprobe's first chart lost points: {first.num_rows} buckets")

    writer = storage.Writer(root, flush_interval=3600)  # flushed by hand: one new file per step

    def append(step: int) -> None:
        writer.log_metrics(RUN_ID, step, dict(zip(names, values[step % steps].tolist(), strict=True)))
        writer.flush()

    def read() -> int:
        live.update(store)
        return int(live.table().column("count").to_numpy().sum())

    times = _refreshes(refreshes, append, read, steps)
    writer.close()
    if read() != steps + refreshes:
        raise RuntimeError("logprobe's refreshed chart does not hold every step")
    store.close()
    return _summarise(result, first_ms, times, steps + refreshes)


# ----------------------------------------------------------------------------------- TensorBoard


def measure_tensorboard(root: Path, steps: int, n_metrics: int, refreshes: int) -> Result:
    result = Result("TensorBoard EventAccumulator", steps)
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.compat.proto.summary_pb2 import Summary
        from tensorboard.summary.writer.event_file_writer import EventFileWriter
    except ImportError as exc:
        result.note = f"not installed ({exc}); pip install -r requirements-bench.txt"
        return result
    names = metric_names(n_metrics)
    values = _values(steps, n_metrics)
    start = time.perf_counter()
    writer = EventFileWriter(str(root), flush_secs=3600)

    def write_step(step: int) -> None:
        row = values[step % steps]
        for name, value in zip(names, row.tolist(), strict=True):  # one event per add_scalar call
            summary = Summary(value=[Summary.Value(tag=name, simple_value=value)])
            writer.add_event(Event(wall_time=time.time(), step=step, summary=summary))

    for step in range(steps):
        write_step(step)
    writer.flush()
    result.write_s = time.perf_counter() - start

    start = time.perf_counter()
    acc = EventAccumulator(str(root), size_guidance={"scalars": 0})  # 0: keep every point
    acc.Reload()
    points = len(acc.Scalars(CHART_METRIC))
    first_ms = _ms(start)
    if points != steps:
        raise RuntimeError(f"TensorBoard returned {points} of {steps} points")

    def append(step: int) -> None:
        write_step(step)
        writer.flush()

    def read() -> int:
        acc.Reload()
        return len(acc.Scalars(CHART_METRIC))

    times = _refreshes(refreshes, append, read, steps)
    writer.close()
    if read() != steps + refreshes:
        raise RuntimeError("TensorBoard's refresh missed points")
    return _summarise(result, first_ms, times, steps + refreshes)


# ---------------------------------------------------------------------------------------- MLflow


def measure_mlflow(root: Path, steps: int, n_metrics: int, refreshes: int) -> Result:
    result = Result("MLflow get_metric_history (SQLite)", steps)
    try:
        from mlflow.entities import Metric
        from mlflow.tracking import MlflowClient
    except ImportError as exc:
        result.note = f"not installed ({exc}); pip install -r requirements-bench.txt"
        return result
    logging.getLogger("mlflow").setLevel(logging.ERROR)
    logging.getLogger("alembic").setLevel(logging.ERROR)
    names = metric_names(n_metrics)
    values = _values(steps, n_metrics)
    client = MlflowClient(tracking_uri=f"sqlite:///{root}/mlflow.db")
    run_id = client.create_run(client.create_experiment("bench", artifact_location=str(root))).info.run_id
    start = time.perf_counter()
    batch: list[Metric] = []
    now = int(time.time() * 1000)
    for step in range(steps):
        batch.extend(Metric(n, v, now, step) for n, v in zip(names, values[step].tolist(), strict=True))
        if len(batch) >= 1000:  # MLflow's log_batch limit
            client.log_batch(run_id, metrics=batch)
            batch = []
    if batch:
        client.log_batch(run_id, metrics=batch)
    result.write_s = time.perf_counter() - start

    start = time.perf_counter()
    points = len(client.get_metric_history(run_id, CHART_METRIC))
    first_ms = _ms(start)
    if points != steps:
        raise RuntimeError(f"MLflow returned {points} of {steps} points")

    def append(step: int) -> None:
        row = values[step % steps].tolist()
        client.log_batch(run_id, metrics=[Metric(n, v, now, step) for n, v in zip(names, row, strict=True)])

    def read() -> int:
        return len(client.get_metric_history(run_id, CHART_METRIC))

    times = _refreshes(refreshes, append, read, steps)
    return _summarise(result, first_ms, times, steps + refreshes)


# ---------------------------------------------------------------------------------------- report


def run_benchmark(steps: int, peer_steps: int, n_metrics: int, refreshes: int) -> Report:
    report = Report(steps, peer_steps, n_metrics, refreshes, _report.machine_info())
    sizes = [peer_steps] + ([steps] if steps != peer_steps else [])
    for size in sizes:
        with tempfile.TemporaryDirectory(prefix="logprobe-bench-chart-") as tmp:
            report.results.append(measure_logprobe(Path(tmp), size, n_metrics, refreshes))
        _progress(report.results[-1])
    for measure in (measure_tensorboard, measure_mlflow):
        with tempfile.TemporaryDirectory(prefix="logprobe-bench-peer-") as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            report.results.append(measure(Path(tmp), peer_steps, n_metrics, refreshes))
        _progress(report.results[-1])
    return report


def _progress(result: Result) -> None:
    print(json.dumps(asdict(result)), file=sys.stderr, flush=True)


def _fmt(ms: float | None) -> str:
    return "n/a" if ms is None else f"{ms:,.1f} ms"


def render(report: Report, command: str) -> str:
    ours = {r.steps: r for r in report.results if r.tool == "logprobe"}
    base = ours[report.peer_steps]
    full = ours.get(report.steps, base)
    lines = [
        "# Chart-path benchmark",
        "",
        f"Written by `{command}`; rerun it to refresh. The dashboard's path to a chart of one metric",
        f"of a run with {report.n_metrics} metrics per step: first chart data (fresh store, one",
        f"downsampled series of {MAX_POINTS} min/max/last buckets) and the median of {report.refreshes}",
        "refreshes, each after one more step is logged and flushed. Peers read the same values with",
        "their own readers in the same process (see the docstring of `bench/chart_path.py`).",
        "",
        f"## Side by side at {report.peer_steps:,} steps",
        "",
    ]
    rows = []
    for r in report.results:
        if r.steps != report.peer_steps:
            continue
        ratio = "1, 1"
        if r.tool != "logprobe":
            ratio = (
                f"{_x(r.first_ms / base.first_ms)}, {_x(r.refresh_ms / base.refresh_ms)}"
                if r.first_ms and r.refresh_ms and base.first_ms and base.refresh_ms
                else "n/a"
            )
        rows.append([r.tool, _fmt(r.first_ms), _fmt(r.refresh_ms), _fmt(r.refresh_p90_ms), ratio, r.note])
    lines += _report.markdown_table(
        [
            "reader",
            "first chart data",
            "refresh (median)",
            "refresh p90",
            "peer / logprobe (first, refresh)",
            "note",
        ],
        rows,
    )
    lines += [
        "",
        f"## logprobe at {report.steps:,} steps (the issue's targets)",
        "",
        *_report.markdown_table(
            ["measure", "logprobe", "target", ""],
            [
                [
                    "first chart data",
                    _fmt(full.first_ms),
                    f"< {TARGET_FIRST_MS:.0f} ms",
                    verdict(full.first_ms, TARGET_FIRST_MS),
                ],
                [
                    "refresh (median)",
                    _fmt(full.refresh_ms),
                    f"< {TARGET_REFRESH_MS:.0f} ms",
                    verdict(full.refresh_ms, TARGET_REFRESH_MS),
                ],
                ["refresh p90", _fmt(full.refresh_p90_ms), "", ""],
            ],
        ),
        "",
        "Building the stores (not compared; `bench/write_path.py` is the write benchmark):",
        "",
    ]
    for r in report.results:
        if r.write_s is not None:
            lines.append(f"- {r.tool}, {r.steps:,} steps: {r.write_s:,.1f} s")
    lines += ["", "## Machine", ""]
    lines += [f"- {k}: {v}" for k, v in report.machine.items()]
    for module in ("tensorboard", "mlflow"):
        try:
            version = __import__(module).__version__
        except ImportError:
            version = "not installed"
        lines.append(f"- {module}: {version}")
    return "\n".join(lines) + "\n"


def _x(ratio: float) -> str:
    return f"{ratio:,.0f}x" if ratio >= 10 else f"{ratio:.2f}x"


def verdict(value: float | None, target: float) -> str:
    return "n/a" if value is None else ("met" if value < target else "MISSED")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _report.benchmark_parser("chart_path", __doc__)
    parser.add_argument("--steps", type=_report.positive_int, default=DEFAULT_STEPS)
    parser.add_argument("--peer-steps", type=_report.positive_int, default=DEFAULT_PEER_STEPS)
    parser.add_argument("--metrics", type=_report.positive_int, default=DEFAULT_METRICS)
    parser.add_argument("--refreshes", type=_report.positive_int, default=DEFAULT_REFRESHES)
    args, command = _report.parse_command(parser, argv)
    report = run_benchmark(args.steps, min(args.peer_steps, args.steps), args.metrics, args.refreshes)
    return _report.finish(args, render(report, command), asdict(report))


if __name__ == "__main__":
    sys.exit(main())
