"""Scale benchmark: how the reads a person waits on grow with the size of the store.

The issue's target store is 100 runs x 100,000 steps x 20 metrics = 200M points. A Writer would
take hours to log that much through ``Run.log``, so this script writes the Parquet files directly
with pyarrow in exactly the Writer's layout and schema (``storage.SCHEMAS``, one file per flush at
``<root>/<table>/run_id=<id>/<writer_id>-<seq>.parquet``, zstd), plus each run's ``runs``,
``engines`` and ``events`` rows, and then reads them only through ``storage``. Each metrics file
holds 10,000 steps (200,000 rows, under the Writer's 250,000-row ``flush_rows``): the file size a
fast trainer's flushes reach.

Timed on each store (warm page cache, medians of ``--repeats``):

  (a) ``storage.Store(root)`` construction (one footer read per file) and ``storage.list_runs``;
  (b) a one-run chart: ``storage.metric_series`` of one run at 1000 points, for one metric and for
      all 20;
  (c) cross-run correlation in DuckDB SQL through ``store.sql``: every run's mean of
      ``mismatch/k3`` next to its ``engines.enable_prefix_caching`` flag, and every run's
      ``corr(mismatch/k3, train/grad_norm)`` over its steps.

Two sweeps, both cut from one built store by hard-linking files (no data is written twice): steps
per run at the full run count, and runs at the full step count. The exponent of each query is the
slope of log(time) against log(size) (``numpy.polyfit``): about 1 means the cost grows with the
rows stored, about 0 that it does not grow.

Every query result is checked against numbers kept while generating the data (row counts, each
run's mean and correlation, one file's values bit for bit); a mismatch raises and voids the report.

Run it from the repository root: ``python -m bench.scale [--runs R] [--steps S] [--out PATH]``.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import itertools
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bench import _report
from bench._workload import METRIC_NAMES, bytes_under, timed
from logprobe import storage

DEFAULT_RUNS = 100
DEFAULT_STEPS = 100_000
DEFAULT_REPEATS = 3
FILE_STEPS = 10_000  # steps per metrics file: 200,000 rows, under the Writer's flush_rows (250,000)
MAX_POINTS = 1000
SEED = 20240611
K3 = "mismatch/k3"
GRAD = "train/grad_norm"
CHART_RUN = 0  # the run the chart queries read (present in every store of both sweeps)
START_US = 1_700_000_000_000_000  # first step's timestamp; one step per second after it
COMPRESSION = "zstd"  # the Writer's default

QUERIES = ("store_open", "list_runs", "chart_1", "chart_20", "mean_by_flag", "corr_per_run")
QUERY_LABELS = {
    "store_open": "`Store(root)` (footer of every file)",
    "list_runs": "`list_runs` (run list)",
    "chart_1": f"`metric_series`, 1 run x 1 metric, {MAX_POINTS} points",
    "chart_20": f"`metric_series`, 1 run x 20 metrics, {MAX_POINTS} points",
    "mean_by_flag": "per-run mean of `mismatch/k3` joined with an engines flag",
    "corr_per_run": "per-run `corr(mismatch/k3, train/grad_norm)`",
}

MEAN_BY_FLAG_SQL = """
    SELECT m.run_id, e.enable_prefix_caching AS flag, m.mean_k3, m.n
    FROM (SELECT run_id, avg(value) AS mean_k3, count(*) AS n FROM metrics WHERE name = ? GROUP BY run_id) m
    JOIN (SELECT run_id, bool_or(enable_prefix_caching) AS enable_prefix_caching FROM engines
          GROUP BY run_id) e USING (run_id)
    ORDER BY m.run_id
"""

CORR_SQL = """
    SELECT run_id, corr(x, y) AS r, count(*) AS n
    FROM (SELECT run_id, step,
                 max(value) FILTER (WHERE name = ?) AS x,
                 max(value) FILTER (WHERE name = ?) AS y
          FROM metrics WHERE name IN (?, ?) GROUP BY run_id, step)
    GROUP BY run_id ORDER BY run_id
"""


# ---------------------------------------------------------------------------------------- data


def run_id(run: int) -> str:
    return f"scale-{run:04d}"


def prefix_caching(run: int) -> bool:
    """The engines flag of a run: every other run, so the correlation query has two groups."""
    return run % 2 == 0


def file_bounds(steps: int, cuts: Sequence[int]) -> list[tuple[int, int]]:
    """Each metrics file's [first, end) steps: ``FILE_STEPS`` apart, and split at every sweep size
    so that a store of fewer steps is exactly a set of whole files."""
    edges = sorted({0, steps, *range(FILE_STEPS, steps, FILE_STEPS), *(c for c in cuts if 0 < c < steps)})
    return list(itertools.pairwise(edges))


@dataclasses.dataclass(frozen=True)
class FileSums:
    """What a query over one metrics file must add up to, kept while generating it."""

    first: int
    end: int
    path: str
    n: int  # steps in the file
    sx: float  # sums over the file's steps of x = mismatch/k3 and y = train/grad_norm
    sy: float
    sxx: float
    syy: float
    sxy: float


def generate(run: int, first: int, end: int) -> tuple[pa.Table, np.ndarray]:
    """One file's rows, in the Writer's order (step-major, then the metrics of the step).

    Values are levels times log-normal noise (so zstd cannot squeeze them away); ``mismatch/k3``
    and ``train/grad_norm`` share a noise term per step so their correlation is not zero, and runs
    with the engines flag set have twice the ``mismatch/k3`` level. Seeded by (run, first step), so
    the file can be generated again to check a read bit for bit.
    """
    n_metrics = len(METRIC_NAMES)
    steps = end - first
    level = np.random.default_rng([SEED, run]).uniform(1e-3, 1e3, size=n_metrics)
    k3, grad = METRIC_NAMES.index(K3), METRIC_NAMES.index(GRAD)
    level[k3] = 1e-4 * (2.0 if prefix_caching(run) else 1.0)
    rng = np.random.default_rng([SEED, run, first])
    noise = 0.1 * rng.standard_normal((steps, n_metrics))
    shared = rng.standard_normal(steps)
    noise[:, k3] += 0.3 * shared
    noise[:, grad] += 0.2 * shared
    values = level * np.exp(noise)
    n = steps * n_metrics
    step = np.repeat(np.arange(first, end, dtype=np.int64), n_metrics)
    schema = storage.SCHEMAS["metrics"]
    names = pa.array(METRIC_NAMES, pa.string()).take(pa.array(np.tile(np.arange(n_metrics), steps)))
    table = pa.Table.from_arrays(
        [
            pa.array(step),
            pa.array(step),  # policy_version: one policy update per step, as an on-policy trainer logs
            pa.array(START_US + step * 1_000_000).cast(schema.field("ts").type),
            pa.array(["trainer"], pa.string()).take(pa.array(np.zeros(n, np.int32))),
            pa.array(np.zeros(n, np.int32)),
            pa.nulls(n, pa.string()),
            names,
            pa.array(values.reshape(-1)),
        ],
        schema=schema,
    )
    return table, values


def _write(table: pa.Table, table_name: str, run: int, seq: int, root: Path) -> Path:
    """Write one file where and how the Writer would: partition dir, ``<writer_id>-<seq>``, zstd."""
    directory = root / table_name / f"run_id={run_id(run)}"
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"bench-scale-w{run:04d}-{seq:08d}.parquet"
    pq.write_table(table, path, compression=COMPRESSION)
    return path


def build_run(run: int, bounds: Sequence[tuple[int, int]], root: Path) -> list[FileSums]:
    """All files of one run: its ``runs`` row, ``run_start``/``run_end`` events, one ``engines`` row
    and the metrics files; returns the per-file sums the checks compare against."""
    rid = run_id(run)
    created = START_US / 1e6 - 60.0
    origin = {"source": "trainer", "rank": 0, "worker": None}
    runs_row = {
        "name": rid,
        "project": "bench-scale",
        "created_at": int(created * 1e6),
        "host": "bench-host",
        "pid": 1000 + run,
        "git_sha": None,
        "tags": ["bench"],
        "config": json.dumps({"run": run}),
        "logprobe_version": "bench",
        **origin,
    }
    end_step = bounds[-1][1]
    events = [
        {"step": None, "ts": int(created * 1e6), "kind": "run_start", "payload": "{}", **origin},
        {"step": None, "ts": START_US + end_step * 1_000_000, "kind": "run_end", "payload": "{}", **origin},
    ]
    engine = {
        "ts": int(created * 1e6),
        "step_first": 0,
        "engine": "vllm",
        "enable_prefix_caching": prefix_caching(run),
        "dtype": "bfloat16",
        "flags": json.dumps({"enable_prefix_caching": prefix_caching(run)}),
        "fingerprint": f"fp-{int(prefix_caching(run))}",
        **origin,
    }
    seq = 0
    for name, rows in (("runs", [runs_row]), ("engines", [engine]), ("events", events)):
        _write(pa.Table.from_pylist(rows, schema=storage.SCHEMAS[name]), name, run, seq, root)
        seq += 1
    sums = []
    k3, grad = METRIC_NAMES.index(K3), METRIC_NAMES.index(GRAD)
    for first, end in bounds:
        table, values = generate(run, first, end)
        path = _write(table, "metrics", run, seq, root)
        seq += 1
        x, y = values[:, k3], values[:, grad]
        sums.append(
            FileSums(
                first,
                end,
                str(path),
                end - first,
                float(x.sum()),
                float(y.sum()),
                float(x @ x),
                float(y @ y),
                float(x @ y),
            )
        )
    return sums


def build_store(
    root: Path, runs: int, steps: int, cuts: Sequence[int], workers: int
) -> dict[int, list[FileSums]]:
    """Write the full store, runs in parallel (pyarrow and numpy release the GIL while they work)."""
    bounds = file_bounds(steps, cuts)
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {run: pool.submit(build_run, run, bounds, root) for run in range(runs)}
        return {run: future.result() for run, future in futures.items()}


def link_store(full: Path, dest: Path, runs: int, steps: int, sums: dict[int, list[FileSums]]) -> None:
    """A store of the first ``runs`` runs cut at ``steps``, made of hard links to the full store's files."""
    for run in range(runs):
        rid = run_id(run)
        for table in ("runs", "engines", "events"):
            src_dir = full / table / f"run_id={rid}"
            dst_dir = dest / table / f"run_id={rid}"
            dst_dir.mkdir(parents=True, exist_ok=True)
            for src in src_dir.iterdir():
                os.link(src, dst_dir / src.name)
        dst_dir = dest / "metrics" / f"run_id={rid}"
        dst_dir.mkdir(parents=True, exist_ok=True)
        for f in sums[run]:
            if f.end <= steps:
                os.link(f.path, dst_dir / Path(f.path).name)


# ---------------------------------------------------------------------------------------- checks


@dataclasses.dataclass(frozen=True)
class Expected:
    """What each query must return on a store of ``runs`` x ``steps``."""

    runs: int
    steps: int
    mean_k3: list[float]
    corr: list[float]

    @classmethod
    def of(cls, runs: int, steps: int, sums: dict[int, list[FileSums]]) -> Expected:
        means, corrs = [], []
        for run in range(runs):
            files = [f for f in sums[run] if f.end <= steps]
            n = sum(f.n for f in files)
            if n != steps:
                raise _report.BenchmarkError(f"run {run}: the files cover {n} steps, not {steps}")
            sx, sy = sum(f.sx for f in files), sum(f.sy for f in files)
            sxx, syy, sxy = (sum(getattr(f, k) for f in files) for k in ("sxx", "syy", "sxy"))
            means.append(sx / n)
            cov, vx, vy = sxy - sx * sy / n, sxx - sx * sx / n, syy - sy * sy / n
            corrs.append(cov / math.sqrt(vx * vy) if n > 1 and vx > 0 and vy > 0 else math.nan)
        return cls(runs, steps, means, corrs)


def _close(a: float, b: float, rtol: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=rtol, abs_tol=0.0)


def check_list_runs(table: pa.Table, exp: Expected) -> None:
    rows = sorted(table.to_pylist(), key=lambda r: r["run_id"])
    if [r["run_id"] for r in rows] != [run_id(i) for i in range(exp.runs)]:
        raise _report.BenchmarkError(f"list_runs returned {len(rows)} runs, expected {exp.runs}")
    for r in rows:
        if r["points"] != exp.steps * len(METRIC_NAMES) or r["last_step"] != exp.steps - 1:
            raise _report.BenchmarkError(
                f"list_runs: {r['run_id']} has {r['points']} points, last step {r['last_step']}"
            )
        if r["status"] != "finished":
            raise _report.BenchmarkError(f"list_runs: {r['run_id']} is {r['status']}, expected finished")


def check_chart(series: pa.Table, names: Sequence[str], exp: Expected) -> None:
    per_name = {
        r["name"]: r
        for r in series.group_by("name").aggregate([("count", "sum"), ("name", "count")]).to_pylist()
    }
    if sorted(per_name) != sorted(names):
        raise _report.BenchmarkError(
            f"metric_series returned series {sorted(per_name)}, expected {sorted(names)}"
        )
    for name, r in per_name.items():
        if r["count_sum"] != exp.steps:
            raise _report.BenchmarkError(
                f"metric_series: {name} buckets hold {r['count_sum']} points, not {exp.steps}"
            )
        if not 0.9 * min(exp.steps, MAX_POINTS) <= r["name_count"] <= MAX_POINTS:
            raise _report.BenchmarkError(f"metric_series: {name} has {r['name_count']} buckets")


def check_mean_by_flag(table: pa.Table, exp: Expected) -> None:
    rows = table.to_pylist()
    if len(rows) != exp.runs:
        raise _report.BenchmarkError(f"mean query returned {len(rows)} runs, expected {exp.runs}")
    for run, r in enumerate(rows):
        if r["run_id"] != run_id(run) or r["flag"] != prefix_caching(run) or r["n"] != exp.steps:
            raise _report.BenchmarkError(f"mean query: wrong row {r}")
        if not _close(r["mean_k3"], exp.mean_k3[run], 1e-9):
            raise _report.BenchmarkError(
                f"mean query: {r['run_id']} mean {r['mean_k3']!r}, expected {exp.mean_k3[run]!r}"
            )


def check_corr(table: pa.Table, exp: Expected) -> None:
    rows = table.to_pylist()
    if len(rows) != exp.runs:
        raise _report.BenchmarkError(f"corr query returned {len(rows)} runs, expected {exp.runs}")
    for run, r in enumerate(rows):
        if r["run_id"] != run_id(run) or r["n"] != exp.steps:
            raise _report.BenchmarkError(f"corr query: wrong row {r}")
        got = math.nan if r["r"] is None else r["r"]
        if not _close(got, exp.corr[run], 1e-6):
            raise _report.BenchmarkError(
                f"corr query: {r['run_id']} corr {got!r}, expected {exp.corr[run]!r}"
            )


def check_values(store: storage.Store, sums: dict[int, list[FileSums]]) -> int:
    """The first metrics file of the chart run, read back through the Store, equals the generated
    rows bit for bit (every column); returns the rows compared."""
    f = sums[CHART_RUN][0]
    expected, _ = generate(CHART_RUN, f.first, f.end)
    cols = ", ".join(f'"{c}"' for c in expected.column_names)
    got = store.sql(
        f"SELECT {cols} FROM metrics WHERE run_id = ? AND step >= ? AND step < ? ORDER BY step, name",
        [run_id(CHART_RUN), f.first, f.end],
    )
    order = [("step", "ascending"), ("name", "ascending")]
    if not got.cast(expected.schema).equals(expected.sort_by(order)):
        raise _report.BenchmarkError("rows read back through storage.Store differ from the rows written")
    return got.num_rows


# ---------------------------------------------------------------------------------------- measuring


@dataclasses.dataclass(frozen=True)
class Point:
    """All query times on one store (seconds: median and every repeat)."""

    runs: int
    steps: int
    points: int
    files: int
    bytes_total: int
    bytes_metrics: int
    median_s: dict[str, float]
    samples_s: dict[str, list[float]]

    @property
    def bytes_per_million(self) -> float:
        return self.bytes_metrics / (self.points / 1e6)


def measure(root: Path, exp: Expected, sums: dict[int, list[FileSums]], repeats: int) -> Point:
    """Time every query ``repeats`` times on one store, after one checked warm-up round.

    The warm-up reads every file once, so all timings are with a warm page cache (the store fits
    in memory here), which is what a dashboard sees on its second look, not its first.
    """
    names = list(METRIC_NAMES)
    rid = run_id(CHART_RUN)
    queries: dict[str, Callable[[storage.Store], Any]] = {
        "list_runs": storage.list_runs,
        "chart_1": lambda s: storage.metric_series(s, [rid], [K3], max_points=MAX_POINTS),
        "chart_20": lambda s: storage.metric_series(s, [rid], names, max_points=MAX_POINTS),
        "mean_by_flag": lambda s: s.sql(MEAN_BY_FLAG_SQL, [K3]),
        "corr_per_run": lambda s: s.sql(CORR_SQL, [K3, GRAD, K3, GRAD]),
    }
    checks: dict[str, Callable[[Any], None]] = {
        "list_runs": lambda t: check_list_runs(t, exp),
        "chart_1": lambda t: check_chart(t, [K3], exp),
        "chart_20": lambda t: check_chart(t, names, exp),
        "mean_by_flag": lambda t: check_mean_by_flag(t, exp),
        "corr_per_run": lambda t: check_corr(t, exp),
    }
    with storage.Store(root) as store:
        if store.bad_files:
            raise _report.BenchmarkError(f"the store has unreadable files: {store.bad_files}")
        count = store.sql("SELECT count(*) AS n FROM metrics").column("n")[0].as_py()
        if count != exp.runs * exp.steps * len(names):
            raise _report.BenchmarkError(
                f"the store holds {count} metric rows, expected {exp.runs * exp.steps * 20}"
            )
        check_values(store, sums)
        for name, query in queries.items():
            checks[name](query(store))
    samples: dict[str, list[float]] = {q: [] for q in QUERIES}
    for _ in range(repeats):
        elapsed, store = timed(lambda: storage.Store(root))
        samples["store_open"].append(elapsed)
        with store:
            for name, query in queries.items():
                elapsed, result = timed(lambda q=query, s=store: q(s))
                checks[name](result)
                samples[name].append(elapsed)
    bytes_metrics, files = bytes_under(root / "metrics")
    return Point(
        runs=exp.runs,
        steps=exp.steps,
        points=count,
        files=files,
        bytes_total=bytes_under(root)[0],
        bytes_metrics=bytes_metrics,
        median_s={q: statistics.median(v) for q, v in samples.items()},
        samples_s=samples,
    )


def exponent(sizes: Sequence[float], times: Sequence[float]) -> float:
    """Slope of log(time) against log(size): time grows like size ** slope."""
    if len(sizes) < 2:
        return math.nan
    return float(np.polyfit(np.log(sizes), np.log(times), 1)[0])


def reading(slope: float) -> str:
    if math.isnan(slope):
        return "one size only: no exponent"
    if slope < 0.2:
        return "flat: does not grow with the data"
    if slope < 0.8:
        return "sub-linear: fixed costs still weigh"
    if slope < 1.25:
        return "linear: proportional to the data"
    return "super-linear: grows faster than the data"


def sweep_sizes(full: int) -> list[int]:
    """A tenth, three tenths and all of ``full`` (fewer when they coincide)."""
    return sorted({max(1, full // 10), max(1, 3 * full // 10), full})


@dataclasses.dataclass
class Report:
    runs: int
    steps: int
    repeats: int
    command: str
    machine: dict[str, str]
    build_s: float
    build_points: int
    build_bytes: int
    steps_sweep: list[Point]
    runs_sweep: list[Point]
    rows_checked: int

    def exponents(self) -> dict[str, dict[str, float]]:
        return {
            "steps": {
                q: exponent([p.steps for p in self.steps_sweep], [p.median_s[q] for p in self.steps_sweep])
                for q in QUERIES
            },
            "runs": {
                q: exponent([p.runs for p in self.runs_sweep], [p.median_s[q] for p in self.runs_sweep])
                for q in QUERIES
            },
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "metrics": len(METRIC_NAMES),
            **_report.fields(self, "runs", "steps", "repeats", "command", "machine"),
            **_report.fields(self, "build_s", "build_points", "build_bytes", "rows_checked"),
            "steps_sweep": [
                {**dataclasses.asdict(p), "bytes_per_million": p.bytes_per_million} for p in self.steps_sweep
            ],
            "runs_sweep": [
                {**dataclasses.asdict(p), "bytes_per_million": p.bytes_per_million} for p in self.runs_sweep
            ],
            "exponents": {
                sweep: {q: None if math.isnan(v) else v for q, v in slopes.items()}
                for sweep, slopes in self.exponents().items()
            },
            "checks_passed": True,
        }


def run_benchmark(runs: int, steps: int, repeats: int, workers: int, command: str, tmp: Path) -> Report:
    machine = _report.machine_info()
    step_sizes, run_sizes = sweep_sizes(steps), sweep_sizes(runs)
    full = tmp / "full"
    build_s, sums = timed(lambda: build_store(full, runs, steps, step_sizes, workers))
    build_points = runs * steps * len(METRIC_NAMES)
    print(f"built {build_points:,} points in {build_s:.1f} s", file=sys.stderr)
    points: dict[tuple[int, int], Point] = {}
    for r, s in sorted({*((runs, s) for s in step_sizes), *((r, steps) for r in run_sizes)}):
        root = full if (r, s) == (runs, steps) else tmp / f"r{r}-s{s}"
        if root != full:
            link_store(full, root, r, s, sums)
        points[(r, s)] = measure(root, Expected.of(r, s, sums), sums, repeats)
        print(f"measured {r} runs x {s} steps", file=sys.stderr)
        if root != full:
            shutil.rmtree(root)
    with storage.Store(full) as store:
        rows_checked = check_values(store, sums)
    return Report(
        runs=runs,
        steps=steps,
        repeats=repeats,
        command=command,
        machine=machine,
        build_s=build_s,
        build_points=build_points,
        build_bytes=bytes_under(full)[0],
        steps_sweep=[points[(runs, s)] for s in step_sizes],
        runs_sweep=[points[(r, steps)] for r in run_sizes],
        rows_checked=rows_checked,
    )


# ---------------------------------------------------------------------------------------- report


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:,.1f} ms" if seconds < 10 else f"{seconds:,.2f} s"


def _sweep_table(sweep: Sequence[Point], key: str, slopes: dict[str, float]) -> list[str]:
    header = ["query", *(f"{getattr(p, key):,} {key}" for p in sweep), "exponent", "reading"]
    rows = [
        [QUERY_LABELS[q], *(_ms(p.median_s[q]) for p in sweep), f"{slopes[q]:.2f}", reading(slopes[q])]
        for q in QUERIES
    ]
    return _report.markdown_table(header, rows)


def render(report: Report) -> str:
    slopes = report.exponents()
    full = report.steps_sweep[-1]
    all_points = sorted(
        {(p.runs, p.steps): p for p in [*report.steps_sweep, *report.runs_sweep]}.values(),
        key=lambda p: p.points,
    )
    out = [
        "# logprobe scale benchmark",
        "",
        f"A store of {report.runs:,} runs x {report.steps:,} steps x {len(METRIC_NAMES)} metrics = "
        f"{report.build_points:,} points, written as Parquet in the Writer's layout and schema "
        f"({FILE_STEPS:,} steps = {FILE_STEPS * len(METRIC_NAMES):,} rows per metrics file, zstd) in "
        f"{report.build_s:.1f} s, then read only through `storage`. Smaller stores are hard-linked "
        f"subsets of it. Times are medians of {report.repeats} repeats with a warm page cache, after "
        "one untimed round whose results were checked.",
        "",
        *_report.command_section(report.command),
        f"## Growth with steps per run ({report.runs:,} runs)",
        "",
        *_sweep_table(report.steps_sweep, "steps", slopes["steps"]),
        "",
        f"## Growth with runs ({report.steps:,} steps per run)",
        "",
        *_sweep_table(report.runs_sweep, "runs", slopes["runs"]),
        "",
        "Exponent: slope of log(median time) against log(size) over the sizes in the table (numpy "
        "`polyfit`, degree 1); time grows like size^exponent.",
        "",
        "## Size on disk",
        "",
        *_report.markdown_table(
            ["store", "points", "metrics files", "metrics bytes", "bytes per million points", "all tables"],
            [
                [
                    f"{p.runs:,} runs x {p.steps:,} steps",
                    f"{p.points:,}",
                    f"{p.files:,}",
                    f"{p.bytes_metrics:,}",
                    f"{p.bytes_per_million:,.0f}",
                    f"{p.bytes_total:,}",
                ]
                for p in all_points
            ],
        ),
        "",
        f"At the full size: {full.bytes_per_million / 1e6:.2f} MB per million points "
        f"({full.bytes_metrics / full.points:.2f} bytes per point: step, policy_version, ts, source, "
        "rank, worker, name, value).",
        "",
        "## Every repeat (seconds)",
        "",
        *_report.markdown_table(
            ["store", *QUERIES],
            [
                [
                    f"{p.runs:,} x {p.steps:,}",
                    *(" / ".join(f"{t:.3f}" for t in p.samples_s[q]) for q in QUERIES),
                ]
                for p in all_points
            ],
        ),
        "",
        "## Checks (all passed, or there would be no report)",
        "",
        "- Each store's `count(*)` of metric rows equals runs x steps x 20.",
        "- `list_runs`: one row per run, each with steps x 20 points, last step steps - 1, status finished.",
        "- `metric_series`: one series per metric asked for, at most 1000 buckets, bucket counts adding "
        "up to every step.",
        "- Per-run mean and correlation equal those computed in numpy while generating the values "
        "(relative tolerance 1e-9 and 1e-6).",
        f"- {report.rows_checked:,} rows of one file, read back through `storage.Store`, equal the "
        "generated rows in every column.",
        "",
        *_report.machine_section(report.machine),
        "## How to read this",
        "",
        "- `Store(root)` reads the footer of every file once (the catalog), so it grows with the file "
        "count; a live dashboard pays it once and then only for new files.",
        "- `list_runs` takes points, last step and last write per run from the metric files' footers "
        "(row counts and statistics the catalog already holds), so it grows with the file count, not "
        "the rows; until issue 10 it scanned every metric row (1,231 ms at the full size, exponent 0.95).",
        "- The chart queries scan only the run's own files (`Store.sql_over_run`). Queries over a "
        "table's view read files of one schema as one `read_parquet` without `union_by_name`, so "
        "DuckDB prunes other runs' files by their `run_id=` directory before opening them; until "
        "issue 10 every such query read every file's schema.",
        "- The correlation queries scan the rows of two metrics in every run.",
        "- The page cache is warm: a first read after a reboot also pays the disk.",
        "",
    ]
    return "\n".join(out)


# ---------------------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    parser = _report.benchmark_parser("scale", __doc__)
    _report.add_count(parser, "--runs", DEFAULT_RUNS, "runs")
    _report.add_count(parser, "--steps", DEFAULT_STEPS, "steps per run")
    _report.add_count(parser, "--repeats", DEFAULT_REPEATS, "timed repeats")
    parser.add_argument(
        "--workers",
        type=_report.positive_int,
        default=max(1, min(4, os.cpu_count() or 1)),
        help="threads writing the store (default: cores, at most 4)",
    )
    parser.add_argument(
        "--tmp", type=Path, default=None, help="where to build the stores (default: a new temp dir)"
    )
    args, command = _report.parse_command(parser, argv)
    with tempfile.TemporaryDirectory(prefix="logprobe-scale-", dir=args.tmp) as tmp:
        report = run_benchmark(args.runs, args.steps, args.repeats, args.workers, command, Path(tmp))
    return _report.finish(args, render(report), report.to_json())


if __name__ == "__main__":
    sys.exit(main())
