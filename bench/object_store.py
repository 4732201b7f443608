"""Object-store benchmark: the same run written to and read from a local S3 server and local disk.

An ``s3://bucket/prefix`` root keeps the store's layout, one object per file: writers PUT each
flush whole, and readers query a local copy of the immutable files (``storage/_mirror.py``), synced
on ``Store.refresh()``. This script measures what that costs next to a local-disk root, on the same
workload, with an S3 API served by moto (``python -m moto.server``) on a free 127.0.0.1 port, in its
own process, started and stopped here:

  1. write: one run through ``collectors.init`` / ``Run.log`` (20 metrics per step, as
     bench/write_path.py logs), ``writer.flush()`` every ``--flush-every`` steps (the time of each
     flush is the number: on S3 it includes the PUT), then ``Run.close()``;
  2. read, cold: ``storage.Store(root)`` (on S3: listing and downloading every file into an empty
     local copy), ``storage.list_runs`` and one chart (``storage.metric_series``, the run's 20
     metrics at 1000 points);
  3. read, live: ``Store.refresh()`` with nothing new (a dashboard tick: on S3, the listing cost),
     and with one new file per tick from a live writer; with the mirror's ``SyncStats``;
  4. the same chart read instead through pyarrow datasets over the S3 filesystem on every query
     (discovery, filtered ``to_table``, then the same bucketing SQL in DuckDB over the Arrow table),
     against the local copy: why the design reads through a local copy;
  5. listing scale: a store of ``--quiet-runs`` finished runs beside one live run; a live refresh
     with the mirror's hot/cold listing policy against a full re-list (``refresh(full=True)``).

Each of 1-4 runs ``--repeats`` times, disk and S3 alternating which goes first, each repeat in a
fresh root (a new prefix on S3) with an empty local copy; numbers are medians over repeats of each
repeat's own median (or p95). Every read is checked: every logged point comes back with its value,
the S3 chart equals the disk chart, the pyarrow-dataset chart equals ``metric_series``, every live
tick sees its new step; the writers report no error. A failed check raises and voids the report.

Run it from the repository root: ``python -m bench.object_store [--smoke] [--out PATH]``. It needs
moto's server (``moto[server]``, in requirements-test.txt).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
import importlib.util
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs

from bench import _report, _servers
from bench._workload import make_workload, metric_names, timed
from logprobe import collectors, storage
from logprobe.storage._mirror import CACHE_ENV, COLD_PER_SYNC, HOT_S
from logprobe.storage._objectstore import ObjectRoot

N_METRICS = 20
MAX_POINTS = 1000
BUCKET = "logprobe-bench"
RUN_ID = "bench-object-store"
LIVE_RUN = "bench-object-store-live"
# The writer's background flush never fires during a measurement: the script flushes by hand.
NEVER_S = 3600.0
# The mirror's hot window, scaled down from its 300 s so that the quiet runs go quiet within the
# benchmark: a run is quiet once its files have not changed for this long.
BENCH_HOT_S = 1.0
SERVER_START_S = 60.0
AWS_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1"}
# Variables that would point pyarrow at another endpoint or account than the local server.
AWS_UNSET = ("AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION")


@dataclasses.dataclass(frozen=True)
class Sizes:
    steps: int
    flush_every: int
    repeats: int
    ticks: int
    queries: int
    quiet_runs: int


FULL = Sizes(steps=4000, flush_every=10, repeats=3, ticks=20, queries=4, quiet_runs=200)
SMOKE = Sizes(steps=200, flush_every=10, repeats=2, ticks=4, queries=2, quiet_runs=20)

# The metrics table as a pyarrow dataset sees it: the file schema plus the Hive partition column,
# a string as in the Store's views (hive_types = {'run_id': VARCHAR}).
PARTITIONING = ds.partitioning(pa.schema([("run_id", pa.string())]), flavor="hive")
DATASET_SCHEMA = storage.SCHEMAS["metrics"].append(pa.field("run_id", pa.string()))

# storage._queries._bucket's SQL, over an Arrow table of one run's rows: the same chart query.
BUCKET_SQL = """
    SELECT CAST(? AS VARCHAR) AS run_id, name, max(x) AS x, min(x) AS x_first, max(x) AS x_last,
           min(value) AS min, max(value) AS max, arg_max(value, o) AS last,
           avg(value) AS mean, count(*) AS count
    FROM (SELECT name, CAST(step AS DOUBLE) AS x, step AS o, value FROM chart_rows
          WHERE step IS NOT NULL)
    GROUP BY name, least(greatest(floor((x - ?) / ?), 0), ? - 1)
    ORDER BY name, x
"""

# ---------------------------------------------------------------------------------------- the server


@contextlib.contextmanager
def moto_server(log_path: Path) -> Iterator[str]:
    """moto's S3 server on a free 127.0.0.1 port, in its own process; stopped on the way out.

    Its own process, as a real S3 endpoint would be: the client's HTTP, retries and parsing are
    pyarrow's (AWS SDK for C++), exactly as against AWS.
    """
    if importlib.util.find_spec("moto") is None:
        raise SystemExit("bench.object_store needs moto's server: pip install -r requirements-test.txt")
    port = _servers.free_port()
    url = f"http://127.0.0.1:{port}"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            try:
                with urllib.request.urlopen(f"{url}/moto-api/", timeout=2):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    tail = log_path.read_text(errors="replace")[-2000:]
                    raise _report.BenchmarkError(f"moto server did not start on {url}:\n{tail}") from None
                time.sleep(0.1)
        yield url
    finally:
        _servers.stop(proc)


def use_server(url: str) -> None:
    """Point this process's AWS environment at the local server (logprobe reads its endpoint and
    credentials from there, as it would for AWS), and create the bucket."""
    for key in AWS_UNSET:
        os.environ.pop(key, None)
    os.environ.update({**AWS_ENV, "AWS_ENDPOINT_URL": url})
    admin = pafs.S3FileSystem(endpoint_override=url, region=AWS_ENV["AWS_REGION"], allow_bucket_creation=True)
    admin.create_dir(BUCKET)


# ---------------------------------------------------------------------------------------- helpers


def _p95(values: Sequence[float]) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), 95.0))


def fs_and_base(root: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem and base path of a root: the same calls then read either side."""
    if root.startswith("s3://"):
        remote = ObjectRoot(root)
        return remote.fs, remote.base
    return pafs.LocalFileSystem(), root


def stored_files(root: str) -> tuple[int, int]:
    """(data files, bytes) under a root, as its filesystem lists them (temp files excluded)."""
    fs, base = fs_and_base(root)
    infos = fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
    files = [
        i
        for i in infos
        if i.type == pafs.FileType.File
        and i.base_name.endswith(".parquet")
        and not i.base_name.startswith(".")
    ]
    return len(files), sum(int(i.size or 0) for i in files)


def step_metrics(step: int) -> dict[str, float]:
    """A live run's step: values distinct per step, so a read of it can only be that step."""
    return {name: step + i / 100 for i, name in enumerate(metric_names(N_METRICS))}


def _check_writer(stats: storage.WriterStats, what: str) -> None:
    if stats.write_errors or stats.rows_dropped or stats.rows_pending or stats.last_error:
        raise _report.BenchmarkError(f"{what}: the writer reported {stats}")


def _count(store: storage.Store, run_id: str) -> int:
    return store.sql("SELECT count(*) AS n FROM metrics WHERE run_id = ?", [run_id]).column("n")[0].as_py()


# ---------------------------------------------------------------------------------------- 1: write


@dataclasses.dataclass(frozen=True)
class WriteResult:
    flush_s: list[float]
    total_s: float
    files: int
    bytes: int
    rows: int

    @property
    def flush_median_s(self) -> float:
        return statistics.median(self.flush_s)

    @property
    def flush_p95_s(self) -> float:
        return _p95(self.flush_s)


def write_run(root: str, workload: Sequence[dict[str, float]], flush_every: int) -> WriteResult:
    """Log the run, flushing by hand every ``flush_every`` steps; ``close()`` is inside the total,
    since until it returns the run is not all stored. ``init`` (writer thread, ``runs`` row, git
    lookup) is outside: a trainer pays it once."""
    run = collectors.init(run_id=RUN_ID, root=root, flush_interval=NEVER_S, config={"bench": "object_store"})
    writer = run.writer
    flush_s: list[float] = []
    start = time.perf_counter()
    for step, metrics in enumerate(workload):
        run.log(step, metrics)
        if (step + 1) % flush_every == 0:
            elapsed, _ = timed(writer.flush)
            flush_s.append(elapsed)
    run.close()
    total_s = time.perf_counter() - start
    stats = writer.stats()
    _check_writer(stats, f"write to {root}")
    files, size = stored_files(root)
    if files != stats.files_written:
        raise _report.BenchmarkError(
            f"{root}: the writer wrote {stats.files_written} files, the root lists {files}"
        )
    return WriteResult(flush_s, total_s, files, size, stats.rows_written)


# ---------------------------------------------------------------------------------------- 2: cold read


@dataclasses.dataclass(frozen=True)
class ColdResult:
    open_s: float
    list_runs_s: float
    chart_s: float
    listings: int | None  # S3 only: what the first sync listed and downloaded
    downloads: int | None
    bytes_downloaded: int | None

    @property
    def first_chart_s(self) -> float:
        return self.open_s + self.list_runs_s + self.chart_s


def _check_rows(store: storage.Store, workload: Sequence[dict[str, float]], where: str) -> None:
    """Every logged point came back exactly once, with its exact value."""
    got = store.sql(
        "SELECT name, step, value FROM metrics WHERE run_id = ? ORDER BY step, name", [RUN_ID]
    ).to_pylist()
    want = sorted(
        ({"name": n, "step": s, "value": v} for s, m in enumerate(workload) for n, v in m.items()),
        key=lambda r: (r["step"], r["name"]),
    )
    if got != want:
        raise _report.BenchmarkError(f"{where}: {len(got)} rows read back differ from the {len(want)} logged")


def _check_list_runs(table: pa.Table, steps: int, where: str) -> None:
    rows = {r["run_id"]: r for r in table.to_pylist()}
    row = rows.get(RUN_ID)
    if row is None or row["points"] != steps * N_METRICS or row["last_step"] != steps - 1:
        raise _report.BenchmarkError(f"{where}: list_runs gave {row}")
    if row["status"] != "finished":
        raise _report.BenchmarkError(f"{where}: the run is {row['status']}, expected finished")


def _check_chart(series: pa.Table, steps: int, where: str) -> None:
    per_name = series.group_by("name").aggregate([("count", "sum"), ("name", "count")]).to_pylist()
    if sorted(r["name"] for r in per_name) != sorted(metric_names(N_METRICS)):
        raise _report.BenchmarkError(f"{where}: the chart has series {[r['name'] for r in per_name]}")
    for r in per_name:
        if r["count_sum"] != steps or not 0 < r["name_count"] <= MAX_POINTS:
            raise _report.BenchmarkError(
                f"{where}: series {r['name']} has {r['name_count']} buckets, {r['count_sum']}"
            )


def same_chart(a: pa.Table, b: pa.Table) -> bool:
    """Equal bucket for bucket; the mean to rounding (a sum's order is the engine's choice)."""
    if a.num_rows != b.num_rows or a.column_names != b.column_names:
        return False
    exact = [c for c in a.column_names if c != "mean"]
    if not a.select(exact).equals(b.select(exact)):
        return False
    return all(
        math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-300)
        for x, y in zip(a.column("mean").to_pylist(), b.column("mean").to_pylist(), strict=True)
    )


def cold_read(
    root: str, cache_dir: Path, workload: Sequence[dict[str, float]]
) -> tuple[ColdResult, storage.Store, pa.Table]:
    """Open the store with an empty local copy, list the runs, draw the run's chart; returns the
    open store (the live ticks go on with it) and the chart (what every later read must equal)."""
    os.environ[CACHE_ENV] = str(cache_dir)  # read by Store(): a fresh, empty local copy
    names = metric_names(N_METRICS)
    open_s, store = timed(lambda: storage.Store(root))
    sync = store.mirror.last if store.mirror is not None else None
    if store.mirror is not None and store.mirror.last_error is not None:
        raise _report.BenchmarkError(f"{root}: the first sync failed: {store.mirror.last_error}")
    if store.bad_files:
        raise _report.BenchmarkError(f"{root}: unreadable files {store.bad_files}")
    list_s, runs = timed(lambda: storage.list_runs(store))
    chart_s, series = timed(lambda: storage.metric_series(store, [RUN_ID], names, max_points=MAX_POINTS))
    _check_list_runs(runs, len(workload), root)
    _check_chart(series, len(workload), root)
    _check_rows(store, workload, root)
    result = ColdResult(
        open_s,
        list_s,
        chart_s,
        sync.listings if sync else None,
        sync.downloads if sync else None,
        sync.bytes_downloaded if sync else None,
    )
    return result, store, series


# ---------------------------------------------------------------------------------------- 3: live ticks


@dataclasses.dataclass(frozen=True)
class LiveResult:
    idle_s: list[float]
    new_s: list[float]
    idle_listings: list[int] | None
    new_listings: list[int] | None

    @property
    def idle_median_s(self) -> float:
        return statistics.median(self.idle_s)

    @property
    def new_median_s(self) -> float:
        return statistics.median(self.new_s)


def live_ticks(store: storage.Store, root: str, ticks: int) -> LiveResult:
    """``refresh()`` with nothing new, then with one new metrics file per tick from a live run.

    The live run's first files (``runs`` row, ``run_start`` event, step 0) are synced before the
    clock, so each timed tick finds exactly one new file: one step of 20 metrics.
    """
    mirror = store.mirror
    idle_s, idle_listings = [], []
    for _ in range(ticks):
        elapsed, changed = timed(store.refresh)
        if changed:
            raise _report.BenchmarkError(f"{root}: a refresh with nothing new changed the views")
        idle_s.append(elapsed)
        if mirror is not None:
            if mirror.last.downloads:
                raise _report.BenchmarkError(f"{root}: a refresh with nothing new downloaded {mirror.last}")
            idle_listings.append(mirror.last.listings)
    live = collectors.init(run_id=LIVE_RUN, root=root, flush_interval=NEVER_S)
    live.log(0, step_metrics(0))
    live.writer.flush()
    store.refresh()
    new_s, new_listings = [], []
    for step in range(1, ticks + 1):
        live.log(step, step_metrics(step))
        live.writer.flush()
        elapsed, changed = timed(store.refresh)
        new_s.append(elapsed)
        if mirror is not None:
            if mirror.last.downloads != 1:
                raise _report.BenchmarkError(f"{root}: a tick with one new file synced {mirror.last}")
            new_listings.append(mirror.last.listings)
        if not changed or _count(store, LIVE_RUN) != (step + 1) * N_METRICS:
            raise _report.BenchmarkError(
                f"{root}: step {step} of the live run is not visible after refresh()"
            )
    live.close()
    _check_writer(live.writer.stats(), f"live run on {root}")
    store.refresh()
    return LiveResult(idle_s, new_s, idle_listings or None, new_listings or None)


# ---------------------------------------------------------------------------------------- 4: chart paths


@dataclasses.dataclass(frozen=True)
class ChartResult:
    store_s: list[float]  # refresh() + metric_series on the Store (on S3: the mirror's local copy)
    discover_s: list[float]  # pyarrow dataset: listing the metrics table
    scan_s: list[float]  # filtered to_table: the run's 20 metrics
    bucket_s: list[float]  # the bucketing SQL in DuckDB over the Arrow table

    @property
    def dataset_s(self) -> list[float]:
        return [a + b + c for a, b, c in zip(self.discover_s, self.scan_s, self.bucket_s, strict=True)]


def dataset_chart(
    root: str, names: Sequence[str], con: duckdb.DuckDBPyConnection
) -> tuple[float, float, float, pa.Table]:
    """The chart read with no local copy: pyarrow datasets over the root's filesystem (S3 or disk),
    as a reader that lists and reads the objects on every query would. Returns the three stage
    times and the chart."""
    fs, base = fs_and_base(root)
    discover_s, dataset = timed(
        lambda: ds.dataset(
            f"{base}/metrics",
            filesystem=fs,
            format="parquet",
            partitioning=PARTITIONING,
            schema=DATASET_SCHEMA,
        )
    )
    wanted = (pc.field("run_id") == RUN_ID) & pc.field("name").isin(list(names))
    scan_s, rows = timed(lambda: dataset.to_table(columns=["name", "step", "value"], filter=wanted))

    def bucket() -> pa.Table:
        bounds = pc.min_max(rows.column("step")).as_py()
        lo, hi = float(bounds["min"]), float(bounds["max"])
        width = (hi - lo) / MAX_POINTS if hi > lo else 1.0
        con.register("chart_rows", rows)
        try:
            return con.sql(BUCKET_SQL, params=[RUN_ID, lo, width, MAX_POINTS]).to_arrow_table()
        finally:
            con.unregister("chart_rows")

    bucket_s, series = timed(bucket)
    return discover_s, scan_s, bucket_s, series


def chart_paths(store: storage.Store, root: str, queries: int, expected: pa.Table) -> ChartResult:
    """Each query both ways: the Store (refresh first, as the dashboard does before a query) and
    pyarrow datasets; each result must equal the cold read's chart."""
    names = metric_names(N_METRICS)
    con = duckdb.connect()
    out: dict[str, list[float]] = {k: [] for k in ("store", "discover", "scan", "bucket")}
    for _ in range(queries):
        elapsed, series = timed(
            lambda: (store.refresh(), storage.metric_series(store, [RUN_ID], names, max_points=MAX_POINTS))[1]
        )
        if not same_chart(series, expected):
            raise _report.BenchmarkError(f"{root}: a repeated chart query differs from the first")
        out["store"].append(elapsed)
        discover_s, scan_s, bucket_s, series = dataset_chart(root, names, con)
        if not same_chart(series, expected):
            raise _report.BenchmarkError(f"{root}: the pyarrow-dataset chart differs from metric_series")
        out["discover"].append(discover_s)
        out["scan"].append(scan_s)
        out["bucket"].append(bucket_s)
    con.close()
    return ChartResult(out["store"], out["discover"], out["scan"], out["bucket"])


# ---------------------------------------------------------------------------------------- one repeat


@dataclasses.dataclass(frozen=True)
class SideResult:
    write: WriteResult
    cold: ColdResult
    live: LiveResult
    chart: ChartResult


def measure_side(
    root: str, cache_dir: Path, workload: Sequence[dict[str, float]], sizes: Sizes
) -> tuple[SideResult, pa.Table]:
    """Measurements 1-4 on one root; also returns its chart, which must equal the other side's."""
    write = write_run(root, workload, sizes.flush_every)
    cold, store, series = cold_read(root, cache_dir, workload)
    with store:
        live = live_ticks(store, root, sizes.ticks)
        chart = chart_paths(store, root, sizes.queries, series)
    return SideResult(write, cold, live, chart), series


# ---------------------------------------------------------------------------------------- 5: listing scale


@dataclasses.dataclass(frozen=True)
class ScaleResult:
    build_s: float  # writing the quiet runs (not a measurement of interest; for the record)
    open_s: float  # Store(root) over them (S3: full listing and download)
    policy_s: list[float]
    full_s: list[float]
    open_listings: int | None
    policy_listings: list[int] | None
    full_listings: list[int] | None
    quiet_partitions: int | None


def build_quiet(root: str, runs: int) -> float:
    """``runs`` finished runs, each as a trainer leaves it: a ``runs`` row, ``run_start`` and
    ``run_end`` events and a few steps of metrics, one file per table and run."""
    start = time.perf_counter()
    with storage.Writer(root, flush_interval=NEVER_S) as writer:
        for i in range(runs):
            rid = f"quiet-{i:04d}"
            writer.append(
                "runs", rid, {"name": rid, "project": "bench-object-store", "created_at": time.time()}
            )
            writer.append("events", rid, {"kind": "run_start", "payload": "{}"})
            for step in range(3):
                writer.log_metrics(rid, step, step_metrics(step))
            writer.append("events", rid, {"kind": "run_end", "payload": "{}"})
    _check_writer(writer.stats(), f"quiet runs on {root}")
    return time.perf_counter() - start


def listing_scale(root: str, cache_dir: Path, runs: int, ticks: int) -> ScaleResult:
    """A live refresh over many quiet runs and one live run: the mirror's policy, then a full re-list.

    The hot window is scaled down (``BENCH_HOT_S``) and the live run keeps writing while it passes,
    so the quiet runs are quiet and the live run is hot, as after five minutes of a real store.
    """
    build_s = build_quiet(root, runs)
    os.environ[CACHE_ENV] = str(cache_dir)
    open_s, store = timed(lambda: storage.Store(root))
    mirror = store.mirror
    open_listings = mirror.last.listings if mirror is not None else None
    with store:
        if mirror is not None:
            mirror.hot_s = BENCH_HOT_S
        live = collectors.init(run_id=LIVE_RUN, root=root, flush_interval=NEVER_S)
        step = 0
        settle_until = time.monotonic() + 1.5 * BENCH_HOT_S
        while step < 2 or time.monotonic() < settle_until:
            live.log(step, step_metrics(step))
            live.writer.flush()
            store.refresh()
            step += 1
            time.sleep(0.1)

        def tick(full: bool) -> tuple[float, int | None]:
            nonlocal step
            live.log(step, step_metrics(step))
            live.writer.flush()
            elapsed, _ = timed(lambda: store.refresh(full=full))
            step += 1
            if _count(store, LIVE_RUN) != step * N_METRICS:
                raise _report.BenchmarkError(
                    f"{root}: the live run's step {step - 1} is not visible (full={full})"
                )
            if mirror is None:
                return elapsed, None
            if mirror.last.downloads != 1 or mirror.last_error is not None:
                raise _report.BenchmarkError(f"{root}: a tick with one new file synced {mirror.last}")
            return elapsed, mirror.last.listings

        policy = [tick(False) for _ in range(ticks)]
        full = [tick(True) for _ in range(max(2, ticks // 4))]
        live.close()
        _check_writer(live.writer.stats(), f"live run on {root}")
        quiet = None
        if mirror is not None:
            # Every partition in the local copy is quiet but the live run's metrics, which changes
            # every tick: what the cold rotation has to get through.
            partitions = [p for table in storage.TABLES for p in (mirror.dir / table).glob("run_id=*")]
            quiet = len(partitions) - 1
        n_runs = storage.list_runs(store).num_rows
        if n_runs != runs + 1:
            raise _report.BenchmarkError(f"{root}: list_runs shows {n_runs} runs, expected {runs + 1}")
    return ScaleResult(
        build_s,
        open_s,
        [t for t, _ in policy],
        [t for t, _ in full],
        open_listings,
        [n for _, n in policy] if mirror is not None else None,
        [n for _, n in full] if mirror is not None else None,
        quiet,
    )


# ---------------------------------------------------------------------------------------- the whole run


@dataclasses.dataclass
class Report:
    sizes: Sizes
    command: str
    machine: dict[str, str]
    server_start_s: float
    repeats: list[dict[str, SideResult]]
    scale: dict[str, ScaleResult]
    wall_s: float = 0.0


SIDES = ("disk", "s3")


def run_benchmark(sizes: Sizes, command: str, tmp: Path) -> Report:
    machine = {**_report.machine_info(), "moto (S3 server)": importlib.metadata.version("moto")}
    workload = make_workload(sizes.steps, N_METRICS, seed=11)
    start = time.perf_counter()
    with moto_server(tmp / "moto.log") as url:
        server_start_s = time.perf_counter() - start
        use_server(url)
        repeats: list[dict[str, SideResult]] = []
        for rep in range(sizes.repeats):
            roots = {"disk": str(tmp / f"disk-{rep}"), "s3": f"s3://{BUCKET}/rep-{rep}"}
            order = SIDES if rep % 2 == 0 else SIDES[::-1]
            results: dict[str, SideResult] = {}
            charts: dict[str, pa.Table] = {}
            for side in order:
                results[side], charts[side] = measure_side(
                    roots[side], tmp / f"cache-{side}-{rep}", workload, sizes
                )
                print(f"repeat {rep + 1}/{sizes.repeats}: {side} done", file=sys.stderr, flush=True)
            if not same_chart(charts["disk"], charts["s3"]):
                raise _report.BenchmarkError("the chart read from S3 differs from the chart read from disk")
            repeats.append(results)
        scale = {
            side: listing_scale(root, tmp / f"cache-scale-{side}", sizes.quiet_runs, sizes.ticks)
            for side, root in (("disk", str(tmp / "disk-quiet")), ("s3", f"s3://{BUCKET}/quiet"))
        }
        print("listing scale done", file=sys.stderr, flush=True)
    report = Report(sizes, command, machine, server_start_s, repeats, scale)
    report.wall_s = time.perf_counter() - start
    return report


# ---------------------------------------------------------------------------------------- numbers


def medians(report: Report) -> dict[str, dict[str, float]]:
    """Per side: each measure's median over repeats of that repeat's own median (or p95)."""
    per_repeat: dict[str, Callable[[SideResult], float | None]] = {
        "flush_median_s": lambda r: r.write.flush_median_s,
        "flush_p95_s": lambda r: r.write.flush_p95_s,
        "write_total_s": lambda r: r.write.total_s,
        "files_written": lambda r: r.write.files,
        "bytes_stored": lambda r: r.write.bytes,
        "open_s": lambda r: r.cold.open_s,
        "list_runs_s": lambda r: r.cold.list_runs_s,
        "chart_s": lambda r: r.cold.chart_s,
        "first_chart_s": lambda r: r.cold.first_chart_s,
        "open_listings": lambda r: r.cold.listings,
        "open_downloads": lambda r: r.cold.downloads,
        "open_bytes_downloaded": lambda r: r.cold.bytes_downloaded,
        "refresh_idle_s": lambda r: r.live.idle_median_s,
        "refresh_new_file_s": lambda r: r.live.new_median_s,
        "refresh_idle_listings": lambda r: _med(r.live.idle_listings),
        "refresh_new_file_listings": lambda r: _med(r.live.new_listings),
        "chart_store_s": lambda r: statistics.median(r.chart.store_s),
        "chart_dataset_discover_s": lambda r: statistics.median(r.chart.discover_s),
        "chart_dataset_scan_s": lambda r: statistics.median(r.chart.scan_s),
        "chart_dataset_bucket_s": lambda r: statistics.median(r.chart.bucket_s),
        "chart_dataset_s": lambda r: statistics.median(r.chart.dataset_s),
    }
    out: dict[str, dict[str, float]] = {}
    for side in SIDES:
        out[side] = {}
        for key, get in per_repeat.items():
            values = [get(rep[side]) for rep in report.repeats]
            if all(v is not None for v in values):
                out[side][key] = statistics.median(values)
    return out


def _med(values: Sequence[int] | None) -> float | None:
    return statistics.median(values) if values else None


def scale_numbers(result: ScaleResult) -> dict[str, float]:
    out: dict[str, float | None] = {
        "build_s": result.build_s,
        "open_s": result.open_s,
        "refresh_policy_s": statistics.median(result.policy_s),
        "refresh_full_s": statistics.median(result.full_s),
        "open_listings": result.open_listings,
        "refresh_policy_listings": _med(result.policy_listings),
        "refresh_full_listings": _med(result.full_listings),
        "quiet_partitions": result.quiet_partitions,
    }
    return {k: v for k, v in out.items() if v is not None}


def to_json(report: Report) -> dict[str, Any]:
    """The numbers (every one positive: zero counts, such as writer errors, are checked instead)."""
    return {
        "command": report.command,
        "machine": report.machine,
        "sizes": dataclasses.asdict(report.sizes),
        "metrics": N_METRICS,
        "hot_s": BENCH_HOT_S,
        "server_start_s": report.server_start_s,
        "wall_s": report.wall_s,
        "medians": medians(report),
        "repeats": [
            {
                side: {
                    "flush_s": r.write.flush_s,
                    "write_total_s": r.write.total_s,
                    "open_s": r.cold.open_s,
                    "list_runs_s": r.cold.list_runs_s,
                    "chart_s": r.cold.chart_s,
                    "refresh_idle_s": r.live.idle_s,
                    "refresh_new_file_s": r.live.new_s,
                    "chart_store_s": r.chart.store_s,
                    "chart_dataset_s": r.chart.dataset_s,
                }
                for side, r in rep.items()
            }
            for rep in report.repeats
        ],
        "listing_scale": {
            side: {**scale_numbers(r), "policy_s": r.policy_s, "full_s": r.full_s}
            for side, r in report.scale.items()
        },
        "checks_passed": True,
    }


# ---------------------------------------------------------------------------------------- report


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:,.1f} ms" if seconds < 1 else f"{seconds:,.2f} s"


def _count_text(value: float | None) -> str:
    """A count; a median of two counts may end in .5, which says nothing here: rounded."""
    return "" if value is None else f"{value:,.0f}"


def meaning(d: dict[str, float], s: dict[str, float], ss: dict[str, float], sz: Sizes) -> list[str]:
    """The closing bullets, worded from the numbers so that a rerun cannot contradict them."""
    extra = s["first_chart_s"] - d["first_chart_s"]
    open_extra = s["open_s"] - d["open_s"]
    busy = s["flush_median_s"] / 1.0  # per default 1 s flush interval
    store_s, dataset_s = s["chart_store_s"], s["chart_dataset_s"]
    if dataset_s > store_s:
        paths = (
            f"- Reading the objects in place through pyarrow datasets took {dataset_s / store_s:,.1f}x "
            f"as long per chart query on S3 as the local copy's refresh and query "
            f"({_ms(dataset_s)} against {_ms(store_s)}): it lists the table and fetches every one of the "
            "run's files on every query, where the copy fetches each file once and then lists. This "
            "is what the design rests on: a local copy of the immutable files, synced on refresh."
        )
    else:
        paths = (
            f"- Here pyarrow datasets over S3 were as fast or faster per chart query than the local "
            f"copy ({_ms(dataset_s)} against {_ms(store_s)}): at this size the copy's listing costs "
            "more than fetching the run's few files, so this run does not support the local copy."
        )
    return [
        f"- Writing: a flush to S3 took {_report.ratio(s['flush_median_s'], d['flush_median_s'])} as long as "
        f"a flush to disk ({_ms(s['flush_median_s'])} against {_ms(d['flush_median_s'])} at the median). "
        "The writer's background thread pays it, not `log()`; at the default 1 s flush interval "
        f"the thread would spend about {busy:.1%} of each interval in `flush()`, most of it waiting "
        "on the server.",
        f"- The first chart from S3 took {_report.ratio(s['first_chart_s'], d['first_chart_s'])} as long as "
        f"from disk; {open_extra / extra:.0%} of the extra {_ms(extra)} is `Store(root)` listing and "
        "downloading every file into the local copy. `list_runs` and the chart then read local files "
        f"and cost about what they cost on disk ({_report.ratio(s['list_runs_s'], d['list_runs_s'])} and "
        f"{_report.ratio(s['chart_s'], d['chart_s'])}).",
        f"- A live tick on S3 is mostly listing: {_ms(s['refresh_idle_s'])} with nothing new "
        f"({_count_text(s['refresh_idle_listings'])} listings; on disk {_ms(d['refresh_idle_s'])}), "
        f"{_ms(s['refresh_new_file_s'])} with one new file.",
        paths,
        f"- With {sz.quiet_runs:,} quiet runs, the hot/cold policy kept a live tick at "
        f"{_count_text(ss.get('refresh_policy_listings'))} listings instead of "
        f"{_count_text(ss.get('refresh_full_listings'))} "
        f"({ss['refresh_full_s'] / ss['refresh_policy_s']:,.1f}x faster than a full re-list).",
    ]


def render(report: Report) -> str:
    m = medians(report)
    d, s = m["disk"], m["s3"]
    sz = report.sizes
    points = sz.steps * N_METRICS
    sd, ss = scale_numbers(report.scale["disk"]), scale_numbers(report.scale["s3"])

    def timed_row(label: str, key: str, extra: str = "") -> list[str]:
        row = [label, _ms(d[key]), _ms(s[key]), _report.ratio(s[key], d[key])]
        return [*row, extra] if extra != "" else row

    def scale_row(label: str, what: str) -> list[str]:
        """A listing-scale row: ``<what>_s`` on both sides, the ratio and S3's ``<what>_listings``."""
        key = f"{what}_s"
        return [
            label,
            _ms(sd[key]),
            _ms(ss[key]),
            _report.ratio(ss[key], sd[key]),
            _count_text(ss.get(f"{what}_listings")),
        ]

    store_vs_dataset = s["chart_dataset_s"] / s["chart_store_s"]
    full_vs_policy = ss["refresh_full_s"] / ss["refresh_policy_s"]
    rotation = math.ceil(ss.get("quiet_partitions", 0) / COLD_PER_SYNC)
    out = [
        "# logprobe object-store benchmark",
        "",
        f"The same run, {sz.steps:,} steps x {N_METRICS} metrics = {points:,} points logged through "
        f"`collectors.init` / `Run.log` with `writer.flush()` every {sz.flush_every} steps, written to "
        "and read from local disk and an `s3://` root on a local S3 server (moto "
        f"{report.machine['moto (S3 server)']}, its own process on 127.0.0.1, started in "
        f"{report.server_start_s:.1f} s). Medians over {sz.repeats} repeats (each repeat's own median "
        "or p95), each repeat in a fresh root and an empty local copy, disk and S3 alternating which "
        f"goes first. The whole run took {report.wall_s:.0f} s.",
        "",
        *_report.command_section(report.command),
        "## Write",
        "",
        *_report.markdown_table(
            ["", "disk", "S3", "S3/disk"],
            [
                timed_row("`writer.flush()`, median (S3: one PUT per file)", "flush_median_s"),
                timed_row("`writer.flush()`, p95", "flush_p95_s"),
                timed_row("whole run: first `log()` to `close()` returned", "write_total_s"),
                [
                    "files written",
                    _count_text(d["files_written"]),
                    _count_text(s["files_written"]),
                    _report.ratio(s["files_written"], d["files_written"]),
                ],
                [
                    "bytes stored",
                    _count_text(d["bytes_stored"]),
                    _count_text(s["bytes_stored"]),
                    _report.ratio(s["bytes_stored"], d["bytes_stored"]),
                ],
                ["writer errors, rows dropped", "0, 0", "0, 0", ""],
            ],
        ),
        "",
        "## Read, cold: the first chart",
        "",
        *_report.markdown_table(
            ["", "disk", "S3", "S3/disk"],
            [
                timed_row(
                    "`Store(root)` (S3: listing + download of every file into the empty local copy)",
                    "open_s",
                ),
                timed_row("`list_runs`", "list_runs_s"),
                timed_row(f"`metric_series`, 1 run x {N_METRICS} metrics, {MAX_POINTS} points", "chart_s"),
                timed_row("all three: open to first chart", "first_chart_s"),
            ],
        ),
        "",
        f"The S3 open made {_count_text(s['open_listings'])} listings and "
        f"{_count_text(s['open_downloads'])} downloads ({s['open_bytes_downloaded'] / 1e6:,.2f} MB).",
        "",
        "## Read, live: the dashboard's refresh tick",
        "",
        *_report.markdown_table(
            ["`Store.refresh()`", "disk", "S3", "S3/disk", "S3 listings per tick"],
            [
                timed_row("nothing new", "refresh_idle_s", _count_text(s["refresh_idle_listings"])),
                timed_row(
                    "one new file (one step) from a live writer",
                    "refresh_new_file_s",
                    _count_text(s["refresh_new_file_listings"]),
                ),
            ],
        ),
        "",
        f"Medians of {sz.ticks} ticks of each kind per repeat. An S3 tick lists each of the "
        f"{len(storage.TABLES)} tables' partitions (one delimiter listing each) and then every partition "
        f"changed within the hot window ({HOT_S:.0f} s), here all of them; a new file is one download.",
        "",
        "## The chart query: local copy against pyarrow datasets over S3",
        "",
        "Each query of the same chart made both ways on the same store: through the `Store` "
        "(`refresh()`, then `metric_series`; on S3 that is the mirror's sync and a query of its local "
        "copy), and with no local copy: `pyarrow.dataset.dataset(<base>/metrics, filesystem=<S3 or "
        "local>, partitioning=hive)` (a fresh dataset per query, so that it sees new files), a "
        "`to_table` filtered to the run and its 20 metrics, and `storage`'s bucketing SQL in DuckDB "
        "over that Arrow table. The two charts are checked equal.",
        "",
        *_report.markdown_table(
            ["per query", "disk", "S3", "S3/disk"],
            [
                timed_row("`Store`: `refresh()` + `metric_series` (S3: the local copy)", "chart_store_s"),
                timed_row("pyarrow dataset: discovery (listing)", "chart_dataset_discover_s"),
                timed_row("pyarrow dataset: filtered `to_table`", "chart_dataset_scan_s"),
                timed_row("DuckDB bucketing of the Arrow table", "chart_dataset_bucket_s"),
                timed_row("pyarrow dataset: the whole query", "chart_dataset_s"),
            ],
        ),
        "",
        f"On S3, a chart query through pyarrow datasets took {store_vs_dataset:,.1f}x as long as the "
        f"same chart through the local copy ({_ms(s['chart_dataset_s'])} against "
        f"{_ms(s['chart_store_s'])}), refresh included; medians of {sz.queries} queries per repeat.",
        "",
        f"## Listing scale: {sz.quiet_runs:,} quiet runs and one live run",
        "",
        f"{sz.quiet_runs:,} finished runs (a `runs` row, two events and 3 steps each: "
        f"{3 * sz.quiet_runs:,} files, written in {_ms(report.scale['s3'].build_s)} to S3 and "
        f"{_ms(report.scale['disk'].build_s)} to disk) and one live run that writes one new file per "
        f"tick. The mirror's hot window is scaled down to {BENCH_HOT_S:g} s (from {HOT_S:.0f} s) and "
        "waited out, so the finished runs are quiet, as they would be after five minutes; it lists "
        f"at most {COLD_PER_SYNC} quiet partitions per tick. Medians of {sz.ticks} policy ticks and "
        f"{len(report.scale['s3'].full_s)} full re-lists; every tick must see the live run's new step.",
        "",
        *_report.markdown_table(
            ["", "disk", "S3", "S3/disk", "S3 listings"],
            [
                scale_row("`Store(root)` over all of them (S3: first full download)", "open"),
                scale_row("live `refresh()`, hot/cold listing policy", "refresh_policy"),
                scale_row("live `refresh(full=True)`, every partition re-listed", "refresh_full"),
            ],
        ),
        "",
        f"On S3 the full re-list took {full_vs_policy:,.1f}x as long as the policy's tick, with "
        f"{ss['refresh_full_listings'] / ss['refresh_policy_listings']:,.0f}x the listings. The price of "
        f"the policy: a quiet run that wakes up is found within {rotation:,} ticks "
        f"({_count_text(ss.get('quiet_partitions'))} quiet partitions / {COLD_PER_SYNC} per tick); a new "
        "run at once. On disk both are one scan of the directory tree (no policy applies).",
        "",
        "## Not measured here",
        "",
        "- DuckDB's own S3 reader (the `httpfs` extension): the PyPI build (`duckdb-extension-httpfs`, "
        "latest 1.5.5) requires `duckdb==1.5.5` and refuses to load into this project's DuckDB "
        f"{duckdb.__version__} (\"The file was built specifically for DuckDB version 'v1.5.5' and can "
        'only be loaded with that version of DuckDB"), and this machine cannot download extensions '
        "from DuckDB's own repository. So the third read path, DuckDB querying the objects in place, "
        "has no number here.",
        "- AWS: moto is a Python server on the same machine, sharing its cores with the client. "
        "Absolute S3 times are moto's (its request handling, not a network), not AWS's, where each "
        "request costs a network round trip (tens of ms) but the server's CPU is not ours. The ratios "
        "describe this local-loopback case only.",
        "",
        "## Every repeat (seconds)",
        "",
        *_report.markdown_table(
            [
                "repeat",
                "side",
                "flush median",
                "write total",
                "open",
                "first chart",
                "idle refresh",
                "new-file refresh",
                "Store chart",
                "dataset chart",
            ],
            [
                [
                    str(i + 1),
                    side,
                    f"{r.write.flush_median_s:.4f}",
                    f"{r.write.total_s:.3f}",
                    f"{r.cold.open_s:.3f}",
                    f"{r.cold.first_chart_s:.3f}",
                    f"{r.live.idle_median_s:.4f}",
                    f"{r.live.new_median_s:.4f}",
                    f"{statistics.median(r.chart.store_s):.4f}",
                    f"{statistics.median(r.chart.dataset_s):.4f}",
                ]
                for i, rep in enumerate(report.repeats)
                for side, r in sorted(rep.items())
            ],
        ),
        "",
        "## Checks (all passed, or there would be no report)",
        "",
        "- Every writer reported no write error, no dropped and no pending row; the root lists exactly "
        "the files the writer wrote.",
        f"- Cold read: every one of the {points:,} points came back with its exact value; `list_runs` "
        "shows the run finished with every point; the chart has one series per metric covering every "
        "step, and the chart read from S3 equals the one read from disk.",
        "- Live: a refresh with nothing new changed no view and downloaded nothing; each tick with a "
        "new file downloaded exactly that file and the query after it saw the new step.",
        "- Every chart query, both paths, equals the cold read's chart bucket for bucket.",
        "- Listing scale: every tick, policy or full, found the live run's new step; `list_runs` "
        "shows every run.",
        "",
        *_report.machine_section(report.machine),
        "## What this means",
        "",
        *meaning(d, s, ss, sz),
        "",
    ]
    return "\n".join(out)


# ---------------------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    parser = _report.benchmark_parser("object_store", __doc__)
    parser.add_argument(
        "--smoke", action="store_true", help=f"small sizes for CI (default sizes: {dataclasses.asdict(FULL)})"
    )
    parser.add_argument("--steps", type=_report.positive_int, default=None, help="steps logged per run")
    parser.add_argument(
        "--flush-every", type=_report.positive_int, default=None, help="steps per writer.flush()"
    )
    parser.add_argument(
        "--repeats", type=_report.positive_int, default=None, help="repeats of measurements 1-4"
    )
    parser.add_argument(
        "--ticks", type=_report.positive_int, default=None, help="live refresh ticks of each kind"
    )
    parser.add_argument(
        "--queries", type=_report.positive_int, default=None, help="chart queries per path and repeat"
    )
    parser.add_argument(
        "--quiet-runs", type=_report.positive_int, default=None, help="runs in the listing-scale store"
    )
    parser.add_argument(
        "--tmp", type=Path, default=None, help="where the disk roots go (default: a temp dir)"
    )
    args, command = _report.parse_command(parser, argv)
    base = SMOKE if args.smoke else FULL
    sizes = dataclasses.replace(
        base,
        **{
            field.name: getattr(args, field.name)
            for field in dataclasses.fields(Sizes)
            if getattr(args, field.name) is not None
        },
    )

    saved = {k: os.environ.get(k) for k in (*AWS_ENV, *AWS_UNSET, "AWS_ENDPOINT_URL", CACHE_ENV)}
    try:
        with tempfile.TemporaryDirectory(prefix="logprobe-objstore-", dir=args.tmp) as tmp:
            report = run_benchmark(sizes, command, Path(tmp))
    finally:
        for key, value in saved.items():  # leave the caller's environment as it was (main() in-process)
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return _report.finish(args, render(report), to_json(report))


if __name__ == "__main__":
    sys.exit(main())
