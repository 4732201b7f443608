"""Monitor benchmark: what the drift monitor costs, against one DuckDB pass over the same rows.

Three numbers a person waits on (issue 16):

  (a) a full scan of one run (``monitor.detect_run``: read every point in file order, group by
      metric on dictionary codes, feed every detector) at each of ``--steps`` steps x ``--metrics``
      metrics, next to one DuckDB pass over the same rows through the same ``storage.Store``
      (``count``, ``avg``, ``min``, ``max`` per metric). The scan is also split into its read
      (``monitor.metric_rows``) and its detectors (``monitor.feed`` plus ``findings()``), to show
      where the time goes;
  (b) an incremental tick: a ``RunMonitor`` that has consumed the whole run, then a new file of
      ``--tick-steps`` steps appears; the tick reads only that file's rows (``metric_rows(pick=)``)
      and feeds them. Also the kept scan the dashboard uses (``monitor.run_findings``: state loaded
      from and saved to ``$LOGPROBE_CACHE_DIR/findings``), after ``store.refresh()``;
  (c) the dashboard's Runs page over ``--ui-runs`` runs of ``--ui-steps`` steps in headless Chromium
      (a real ``logprobe ui`` server on 127.0.0.1, driven by Playwright): seconds from ``goto`` to the
      runs table showing every run, on the first open (every run scanned) and on later opens from
      new browser contexts (fresh Streamlit sessions, so only what is kept on disk helps).

The runs are written as Parquet directly with pyarrow in the Writer's layout and schema
(``<root>/metrics/run_id=<id>/<writer>-<seq>.parquet``, zstd, 10,000 steps per file as in
bench/scale.py), with healthy values of the real mismatch metrics. Times are medians of repeats on a
warm page cache, after one untimed round.

Run it from the repository root:
``python -m bench.monitor [--steps 10000,100000,1000000] [--metrics 20] [--ui-runs 10]
[--ui-steps 100000] [--skip-ui] [--out PATH] [--json PATH]``.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bench import _browser, _report, _servers
from bench._workload import timed
from logprobe import monitor, storage
from logprobe.collectors import MISMATCH_METRICS

DEFAULT_STEPS = (10_000, 100_000, 1_000_000)
DEFAULT_METRICS = 20
DEFAULT_REPEATS = 3
DEFAULT_TICKS = 7
DEFAULT_TICK_STEPS = 10
DEFAULT_UI_RUNS = 10
DEFAULT_UI_STEPS = 100_000
DEFAULT_UI_REPEATS = 3
FILE_STEPS = 10_000  # steps per metrics file, as in bench/scale.py (200,000 rows at 20 metrics)
COMPRESSION = "zstd"  # the Writer's default
START_US = 1_700_000_000_000_000  # first step's timestamp; one step per second after it
SEED = 20240716

# Goals (issue 16).
GOAL_SCAN_RATIO = 10.0  # full scan of the largest run within this factor of the DuckDB pass
GOAL_TICK_S = 0.050  # an incremental tick, whatever the run's length
GOAL_UI_S = 2.0  # Runs page with findings kept

# The mismatch stats a collector logs (less its two token counts), plus one trending training
# metric: 20 names.
METRIC_NAMES = (*MISMATCH_METRICS[2:], "train/kl_ref")

DUCKDB_SQL = (
    "SELECT name, count(*) AS n, avg(value) AS mean, min(value) AS lo, max(value) AS hi "
    "FROM metrics WHERE run_id = ? GROUP BY name"
)
# The same rows the scan reads (the scan's own read is this query; kept as a separate figure so an
# older scan that sorted in SQL can be compared).
PLAIN_SQL = "SELECT name, step, value FROM metrics WHERE run_id = ?"

EXCEPTION = "[data-testid='stException']"
CELLS = "[data-testid='stDataFrame'] table td, [data-testid='stDataFrame'] [role='gridcell']"


# ---------------------------------------------------------------------------------------- data


def metric_names(count: int) -> list[str]:
    """The first ``count`` real names; beyond 20, extra names the monitor judges only for NaN/Inf."""
    names = list(METRIC_NAMES[:count])
    names += [f"bench/extra_{i}" for i in range(count - len(names))]
    return names


def healthy_values(name: str, step: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Healthy values of one metric at these steps: the level of a well-matched rollout engine
    (k3 around 1e-4, Pearson 0.9999, ESS 0.995), with noise so zstd cannot squeeze them away."""
    n = len(step)
    z = rng.standard_normal(n)
    lognormal = np.exp(0.3 * z)
    short = name.split("/", 1)[1]
    if short in ("k1", "seq_log_ratio_mean"):
        return 1e-4 * z
    if short == "prob_pearson":
        return 1.0 - 1e-4 * lognormal
    if short == "ess":
        return 1.0 - 5e-3 * lognormal
    if short == "ratio_mean":
        return 1.0 + 1e-4 * z
    if short == "ratio_min":
        return np.exp(-0.05 * lognormal)
    if short == "ratio_max":
        return np.exp(0.05 * lognormal)
    if short == "kl_ref":  # trends up slowly by design
        return 1e-3 * (1.0 + step / 100_000.0) * np.exp(0.05 * z)
    level = {
        "k2": 1e-4,
        "k3": 1e-4,
        "abs_logp_diff_mean": 5e-3,
        "abs_logp_diff_max": 0.5,
        "abs_prob_diff_mean": 1e-3,
        "abs_prob_diff_max": 0.05,
        "ratio_std": 0.01,
        "chi2": 2e-4,
        "frac_outside_eps": 1e-5,
        "frac_outside_C": 1e-6,
        "seq_log_ratio_abs_max": 0.05,
        "seq_k3_max": 1e-3,
    }.get(short, 1.0)
    return level * lognormal


def metrics_table(names: Sequence[str], first: int, end: int, seed: Sequence[int]) -> pa.Table:
    """Rows of steps [first, end) in the Writer's order (step-major, then the metrics of the step)."""
    n_metrics, steps = len(names), end - first
    step_axis = np.arange(first, end, dtype=np.int64)
    rng = np.random.default_rng([SEED, *seed, first])
    values = np.column_stack([healthy_values(name, step_axis, rng) for name in names])
    n = steps * n_metrics
    step = np.repeat(step_axis, n_metrics)
    schema = storage.SCHEMAS["metrics"]
    return pa.Table.from_arrays(
        [
            pa.array(step),
            pa.array(step),  # policy_version: one update per step
            pa.array(START_US + step * 1_000_000).cast(schema.field("ts").type),
            pa.array(["trainer"], pa.string()).take(pa.array(np.zeros(n, np.int32))),
            pa.array(np.zeros(n, np.int32)),
            pa.nulls(n, pa.string()),
            pa.array(list(names), pa.string()).take(
                pa.array(np.tile(np.arange(n_metrics, dtype=np.int32), steps))
            ),
            pa.array(values.reshape(-1)),
        ],
        schema=schema,
    )


def write_file(root: Path, table_name: str, run_id: str, writer: str, seq: int, table: pa.Table) -> Path:
    """One file where and how the Writer puts it: partition folder, ``<writer>-<seq>``, zstd."""
    directory = root / table_name / f"run_id={run_id}"
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{writer}-{seq:08d}.parquet"
    tmp = path.with_suffix(".tmp")
    pq.write_table(table, tmp, compression=COMPRESSION)
    os.replace(tmp, path)  # atomic, as the Writer commits: a reader never sees half a file
    return path


def write_run(root: Path, run_id: str, index: int, steps: int, names: Sequence[str]) -> int:
    """A finished run: its ``runs`` row, ``run_start``/``run_end`` events and its metrics files;
    returns the metric rows written."""
    writer = f"bench-monitor-w{index:04d}"
    created = START_US - 60_000_000
    origin = {"source": "trainer", "rank": 0, "worker": None}
    runs_row = {
        "name": run_id,
        "project": "bench-monitor",
        "created_at": created,
        "host": "bench-host",
        "pid": 1000 + index,
        "git_sha": None,
        "tags": ["bench"],
        "config": json.dumps({"run": index}),
        "logprobe_version": "bench",
        **origin,
    }
    events = [
        {"step": None, "ts": created, "kind": "run_start", "payload": "{}", **origin},
        {"step": None, "ts": START_US + steps * 1_000_000, "kind": "run_end", "payload": "{}", **origin},
    ]
    write_file(
        root, "runs", run_id, writer, 0, pa.Table.from_pylist([runs_row], schema=storage.SCHEMAS["runs"])
    )
    write_file(
        root, "events", run_id, writer, 1, pa.Table.from_pylist(events, schema=storage.SCHEMAS["events"])
    )
    rows = 0
    for seq, first in enumerate(range(0, steps, FILE_STEPS), start=2):
        table = metrics_table(names, first, min(steps, first + FILE_STEPS), (index,))
        write_file(root, "metrics", run_id, writer, seq, table)
        rows += table.num_rows
    return rows


def _median(samples: Sequence[float]) -> float:
    return statistics.median(samples)


# ---------------------------------------------------------------------------------------- (a)+(b)


def check_duckdb(table: pa.Table, names: Sequence[str], steps: int) -> None:
    rows = {r["name"]: r for r in table.to_pylist()}
    if sorted(rows) != sorted(names) or any(r["n"] != steps for r in rows.values()):
        raise _report.BenchmarkError(
            f"DuckDB pass: {len(rows)} metrics, counts {sorted({r['n'] for r in rows.values()})}"
        )


def measure_scan(store: storage.Store, run_id: str, names: Sequence[str], steps: int, repeats: int) -> dict:
    """Full scan against the DuckDB pass; returns medians, samples and the consumed RunMonitor.

    One untimed round of the cheap queries warms the page cache first; the scan itself is not
    run untimed (at 1M steps it takes tens of seconds), the median absorbs a slow first repeat."""
    rows = steps * len(names)
    store.sql(DUCKDB_SQL, [run_id])
    store.sql(PLAIN_SQL, [run_id])
    samples: dict[str, list[float]] = {
        "duckdb": [],
        "plain": [],
        "detect_run": [],
        "read": [],
        "detectors": [],
    }
    findings: list[monitor.Finding] = []
    run_monitor = None
    for _ in range(repeats):
        t_duck, duck = timed(lambda: store.sql(DUCKDB_SQL, [run_id]))
        check_duckdb(duck, names, steps)
        t_plain, plain = timed(lambda: store.sql(PLAIN_SQL, [run_id]))
        if plain.num_rows != rows:
            raise _report.BenchmarkError(f"plain read returned {plain.num_rows:,} rows, expected {rows:,}")
        del plain
        t_scan, findings = timed(lambda: monitor.detect_run(store, run_id))
        t_read, table = timed(lambda: monitor.metric_rows(store, run_id))
        if table.num_rows != rows:
            raise _report.BenchmarkError(f"metric_rows returned {table.num_rows:,} rows, expected {rows:,}")
        run_monitor = monitor.RunMonitor(run_id)
        t_feed, split_found = timed(
            lambda mon=run_monitor, tbl=table: (monitor.feed(mon, tbl), mon.findings())[1]
        )
        del table
        if run_monitor.points != rows:
            raise _report.BenchmarkError(
                f"the monitor consumed {run_monitor.points:,} points, expected {rows:,}"
            )
        if [f.key for f in split_found] != [f.key for f in findings]:
            raise _report.BenchmarkError("detect_run and metric_rows + feed disagree on the findings")
        for key, value in zip(samples, (t_duck, t_plain, t_scan, t_read, t_feed), strict=True):
            samples[key].append(value)
    med = {key: _median(values) for key, values in samples.items()}
    kinds: dict[str, int] = {}
    for f in findings:
        kind = f"{f.metric} {f.detector} ({f.severity})"
        kinds[kind] = kinds.get(kind, 0) + 1
    return {
        "steps": steps,
        "rows": rows,
        "median_s": med,
        "samples_s": samples,
        "ratio_scan_duckdb": med["detect_run"] / med["duckdb"],
        "read_share": med["read"] / (med["read"] + med["detectors"]),
        "findings": len(findings),
        "finding_kinds": dict(sorted(kinds.items(), key=lambda kv: -kv[1])),
        "_monitor": run_monitor,
    }


def measure_ticks(
    store: storage.Store,
    root: Path,
    run_id: str,
    names: Sequence[str],
    steps: int,
    run_monitor: monitor.RunMonitor,
    ticks: int,
    tick_steps: int,
) -> dict:
    """Ticks of a monitor that consumed the run: a new file appears, only its rows are read and fed.
    Then the same with the kept scan (``run_findings``) the dashboard uses."""
    tick_rows = tick_steps * len(names)
    store.refresh()
    seen = set(store.files("metrics"))
    next_step = steps
    samples: dict[str, list[float]] = {"refresh": [], "read": [], "feed": [], "tick": []}

    def new_file(seq: int) -> None:
        nonlocal next_step
        table = metrics_table(names, next_step, next_step + tick_steps, (9999,))
        write_file(root, "metrics", run_id, "bench-monitor-tick", seq, table)
        next_step += tick_steps

    seq = itertools.count()
    for _ in range(ticks + 1):  # the first is an untimed warm-up
        new_file(next(seq))
        t_refresh, _ = timed(store.refresh)
        files = store.files("metrics")
        new = [p for p in files if p not in seen]
        seen.update(new)
        before = run_monitor.points
        pick_new = lambda _files, new=new: new  # noqa: E731 (the tick reads this one file)
        t_read, table = timed(lambda pick_new=pick_new: monitor.metric_rows(store, run_id, pick=pick_new))
        t_feed, _ = timed(lambda table=table: monitor.feed(run_monitor, table))
        if len(new) != 1 or table.num_rows != tick_rows or run_monitor.points - before != tick_rows:
            raise _report.BenchmarkError(
                f"tick: {len(new)} new files, {table.num_rows} rows read, "
                f"{run_monitor.points - before} fed; expected 1, {tick_rows}, {tick_rows}"
            )
        for key, value in zip(samples, (t_refresh, t_read, t_feed, t_read + t_feed), strict=True):
            samples[key].append(value)
    samples = {key: values[1:] for key, values in samples.items()}

    # The kept scan: its first call scans every file so far, each later call only the new one.
    store.refresh()
    t_kept_first, kept = timed(lambda: monitor.run_findings(store, run_id))
    kept_samples: list[float] = []
    for _ in range(ticks + 1):
        new_file(next(seq))
        t_kept, kept = timed(lambda: (store.refresh(), monitor.run_findings(store, run_id))[1])
        kept_samples.append(t_kept)
    kept_samples = kept_samples[1:]
    # The kept scan and the tick-fed monitor saw the same rows up to the last tick of the first
    # loop; the kept one saw more since, so compare only the total it consumed.
    return {
        "steps": steps,
        "tick_steps": tick_steps,
        "tick_rows": tick_rows,
        "median_s": {key: _median(values) for key, values in samples.items()},
        "samples_s": samples,
        "kept_first_s": t_kept_first,
        "kept_tick_median_s": _median(kept_samples),
        "kept_tick_samples_s": kept_samples,
        "kept_findings": len(kept),
    }


def run_scan_part(
    sizes: Sequence[int], names: Sequence[str], repeats: int, ticks: int, tick_steps: int, tmp: Path
) -> dict:
    """Each size is its own store of one run (smaller ones hard-linked from the largest's files)."""
    largest = max(sizes)
    full = tmp / "full"
    build_s, build_rows = timed(lambda: write_run(full, "scan-run", 0, largest, names))
    print(f"built {build_rows:,} rows in {build_s:.1f} s", file=sys.stderr, flush=True)
    scans, tick_results = [], []
    for size in sorted(sizes):
        root = tmp / f"steps-{size}"
        for table in ("runs", "events", "metrics"):
            src = full / table / "run_id=scan-run"
            dst = root / table / "run_id=scan-run"
            dst.mkdir(parents=True)
            for path in sorted(src.iterdir()):
                if table != "metrics" or int(path.stem.rsplit("-", 1)[1]) - 2 < math.ceil(size / FILE_STEPS):
                    os.link(path, dst / path.name)
        if size % FILE_STEPS:  # a size that is not whole files: rewrite the last one cut short
            last = (
                root
                / "metrics"
                / "run_id=scan-run"
                / f"bench-monitor-w0000-{size // FILE_STEPS + 2:08d}.parquet"
            )
            last.unlink()
            write_file(
                root,
                "metrics",
                "scan-run",
                "bench-monitor-w0000",
                size // FILE_STEPS + 2,
                metrics_table(names, size - size % FILE_STEPS, size, (0,)),
            )
        with storage.Store(root) as store:
            scan = measure_scan(store, "scan-run", names, size, repeats)
            run_monitor = scan.pop("_monitor")
            print(
                f"{size:,} steps: scan {scan['median_s']['detect_run']:.3f} s, "
                f"DuckDB {scan['median_s']['duckdb']:.3f} s",
                file=sys.stderr,
                flush=True,
            )
            scans.append(scan)
            tick = measure_ticks(store, root, "scan-run", names, size, run_monitor, ticks, tick_steps)
            print(
                f"{size:,} steps: tick {tick['median_s']['tick'] * 1e3:.1f} ms", file=sys.stderr, flush=True
            )
            tick_results.append(tick)
    return {"build_s": build_s, "build_rows": build_rows, "scans": scans, "ticks": tick_results}


# ---------------------------------------------------------------------------------------- (c)


def open_runs_page(browser: Any, url: str, run_ids: Sequence[str], timeout_s: float) -> float:
    """Seconds from ``goto`` until the Runs page's table holds every run id, in a new context (a new
    Streamlit session)."""
    context = browser.new_context(viewport={"width": 1500, "height": 1100})
    page = context.new_page()
    try:
        start = time.perf_counter()
        page.goto(url)
        page.wait_for_function(
            """([selector, ids]) => {
                const cells = Array.from(document.querySelectorAll(selector));
                const text = cells.map(e => e.textContent).join(' ');
                return ids.every(id => text.includes(id));
            }""",
            arg=[CELLS, list(run_ids)],
            timeout=timeout_s * 1000,
            polling=50,
        )
        elapsed = time.perf_counter() - start
        if page.locator(EXCEPTION).count():
            raise RuntimeError(
                f"the Runs page shows an exception: {page.locator(EXCEPTION).first.inner_text()}"
            )
        return elapsed
    except Exception:
        if page.locator(EXCEPTION).count():
            raise RuntimeError(
                f"the Runs page shows an exception: {page.locator(EXCEPTION).first.inner_text()[:1500]}"
            ) from None
        raise
    finally:
        context.close()


def timed_opens(
    what: str, served: tuple[Any, str], run_ids: Sequence[str], repeats: int, timeout_s: float
) -> tuple[float, list[float]]:
    """The first open of a started server's page, then ``repeats`` later ones (each a new Streamlit
    session); the server is stopped afterwards, whatever happens."""
    proc, url = served
    try:
        with _browser.chromium() as browser:
            first = open_runs_page(browser, url, run_ids, timeout_s)
            print(f"{what}, first open: {first:.2f} s", file=sys.stderr, flush=True)
            later = [open_runs_page(browser, url, run_ids, timeout_s) for _ in range(repeats)]
            print(f"{what}, later opens: {later}", file=sys.stderr, flush=True)
    finally:
        _servers.stop(proc)
    return first, later


def run_ui_part(
    runs: int, steps: int, names: Sequence[str], repeats: int, timeout_s: float, tmp: Path
) -> dict:
    root, cache = tmp / "ui-store", tmp / "ui-cache"
    run_ids = [f"ui-run-{i:02d}" for i in range(runs)]
    build_s, rows = timed(lambda: sum(write_run(root, rid, i, steps, names) for i, rid in enumerate(run_ids)))
    print(f"built {rows:,} rows for the Runs page in {build_s:.1f} s", file=sys.stderr, flush=True)
    env = {**os.environ, "LOGPROBE_CACHE_DIR": str(cache)}
    served = _servers.serve_ui(root, log=tmp / "ui-server.log", env=env)
    cold, warm = timed_opens("Runs page", served, run_ids, repeats, timeout_s)
    floor_server = _servers.serve_floor_page(runs, log=tmp / "floor-server.log")
    _, floor = timed_opens("floor page", floor_server, run_ids, repeats, timeout_s)
    kept = list((cache / "findings").rglob("*.json")) if (cache / "findings").exists() else []
    return {
        "runs": runs,
        "steps": steps,
        "rows": rows,
        "build_s": build_s,
        "cold_s": cold,
        "warm_median_s": _median(warm),
        "warm_samples_s": warm,
        "floor_median_s": _median(floor),
        "floor_samples_s": floor,
        "kept_scans": len(kept),
    }


# ---------------------------------------------------------------------------------------- report


def _s(seconds: float) -> str:
    return f"{seconds * 1e3:,.1f} ms" if seconds < 1 else f"{seconds:,.2f} s"


def _met(ok: bool) -> str:
    return "**met**" if ok else "**not met**"


def render(result: dict) -> str:
    scans, ticks, ui = result["scans"], result["ticks"], result.get("ui")
    n_metrics = result["metrics"]
    largest = max(scans, key=lambda s: s["steps"])
    out = [
        "# logprobe monitor benchmark",
        "",
        f"One run of each size ({', '.join(f'{s:,}' for s in result['steps'])} steps x {n_metrics} metrics, "
        "healthy values of the real mismatch metrics), written as Parquet in the Writer's layout "
        f"({FILE_STEPS:,} steps per file, zstd; {result['build_rows']:,} rows in "
        f"{result['build_s']:.1f} s) and "
        "read only through `storage.Store`. The full scan is `monitor.detect_run` (read every point "
        "in file order, group by metric on dictionary codes, feed every detector, collect the findings); "
        "the DuckDB pass is one aggregate over the same rows through the same store "
        f"(`{DUCKDB_SQL}`). The split times `monitor.metric_rows` (the read) and `monitor.feed` + "
        "`findings()` (the detectors) separately. A tick writes one new file of "
        f"{result['tick_steps']} steps x {n_metrics} metrics into a run whose `RunMonitor` consumed "
        "every earlier row, then reads only that file (`metric_rows(pick=...)` picks it) and feeds it. "
        f"Times are medians of {result['repeats']} repeats ({result['ticks_n']} ticks, after one "
        "untimed) on a warm page cache; every result is checked. The machine has 2 cores and other "
        "work was running on it, so the numbers are noisy; compare ratios more than absolute times.",
        "",
        *_report.command_section(result["command"]),
        "## Full scan of one run against one DuckDB pass",
        "",
        *_report.markdown_table(
            [
                "steps x metrics",
                "rows",
                "DuckDB pass",
                "full scan",
                "scan / DuckDB",
                "read",
                "detectors",
                "read share",
                "plain read",
                "findings",
            ],
            [
                [
                    f"{s['steps']:,} x {n_metrics}",
                    f"{s['rows']:,}",
                    _s(s["median_s"]["duckdb"]),
                    _s(s["median_s"]["detect_run"]),
                    f"{s['ratio_scan_duckdb']:.1f}x",
                    _s(s["median_s"]["read"]),
                    _s(s["median_s"]["detectors"]),
                    f"{s['read_share'] * 100:.0f}%",
                    _s(s["median_s"]["plain"]),
                    str(s["findings"]),
                ]
                for s in scans
            ],
        ),
        "",
        "read: `metric_rows` (DuckDB to Arrow, no sort); detectors: `feed` (a radix sort of the "
        "metric codes, each metric's points in step order, every detector) plus `findings()`; read "
        "share = read / (read + detectors). plain read: "
        f"`{PLAIN_SQL}` timed alone. findings: what "
        "the scan reports on these healthy runs"
        + (
            f"; at {largest['steps']:,} steps: "
            + ", ".join(f"{k} x{v}" for k, v in largest["finding_kinds"].items())
            if largest["finding_kinds"]
            else ""
        )
        + ".",
        "",
        "## Incremental tick",
        "",
        *_report.markdown_table(
            [
                "run length",
                "new rows",
                "refresh",
                "read new file",
                "feed",
                "tick (read + feed)",
                "kept scan tick (refresh + `run_findings`)",
                "kept scan, first call",
            ],
            [
                [
                    f"{t['steps']:,} steps",
                    f"{t['tick_rows']:,}",
                    _s(t["median_s"]["refresh"]),
                    _s(t["median_s"]["read"]),
                    _s(t["median_s"]["feed"]),
                    _s(t["median_s"]["tick"]),
                    _s(t["kept_tick_median_s"]),
                    _s(t["kept_first_s"]),
                ]
                for t in ticks
            ],
        ),
        "",
        "refresh: `store.refresh()` after the file appears (lists the files, reads the new footer). "
        "kept scan: `monitor.run_findings`, which loads the monitor's state from "
        "`$LOGPROBE_CACHE_DIR/findings`, reads and feeds the new file, and saves the state again; its "
        "first call on a run scans everything.",
        "",
    ]
    goals = [
        [
            f"full scan of {largest['steps']:,} x {n_metrics} within {GOAL_SCAN_RATIO:.0f}x "
            "of the DuckDB pass",
            f"{largest['ratio_scan_duckdb']:.1f}x ({_s(largest['median_s']['detect_run'])} vs "
            f"{_s(largest['median_s']['duckdb'])})",
            _met(largest["ratio_scan_duckdb"] <= GOAL_SCAN_RATIO),
        ],
        *(
            [
                f"tick at {t['steps']:,} steps under {GOAL_TICK_S * 1e3:.0f} ms (read + feed)",
                _s(t["median_s"]["tick"]),
                _met(t["median_s"]["tick"] < GOAL_TICK_S),
            ]
            for t in ticks
        ),
    ]
    ui_lines: list[str] = ["## Runs page in headless Chromium", ""]
    if ui is None:
        ui_lines += ["Not measured (`--skip-ui`).", ""]
    elif "error" in ui:
        ui_lines += [
            f"**FAILED**: the Runs page over {ui['runs']} runs x {ui['steps']:,} steps could not be "
            "measured:",
            "",
            "```",
            ui["error"].strip(),
            "```",
            "",
        ]
        goals.append(
            [
                f"Runs page over {ui['runs']} runs with findings kept under {GOAL_UI_S:.0f} s",
                "failed",
                "**not measured**",
            ]
        )
    else:
        ui_lines += [
            f"{ui['runs']} runs x {ui['steps']:,} steps x {n_metrics} metrics ({ui['rows']:,} rows, "
            f"written in {ui['build_s']:.1f} s). `logprobe ui --root ...` (Streamlit on 127.0.0.1) with "
            "`LOGPROBE_CACHE_DIR` in a temp dir, Debian's Chromium driven by Playwright. Each open is a "
            "new browser context (a new Streamlit session) timed from `goto` until the runs table holds "
            "every run id. The first open scans every run; later opens find what was kept.",
            "",
            *_report.markdown_table(
                ["open", "seconds", "goal"],
                [
                    ["first (cold: every run scanned)", _s(ui["cold_s"]), "-"],
                    [
                        f"later, findings kept (median of {len(ui['warm_samples_s'])}: "
                        + ", ".join(f"{x:.2f}" for x in ui["warm_samples_s"])
                        + ")",
                        _s(ui["warm_median_s"]),
                        _met(ui["warm_median_s"] < GOAL_UI_S),
                    ],
                    [
                        f"floor: `bench/_floor_page.py`, the same {ui['runs']} run ids in one table and "
                        f"nothing else (median of {len(ui['floor_samples_s'])}: "
                        + ", ".join(f"{x:.2f}" for x in ui["floor_samples_s"])
                        + ")",
                        _s(ui["floor_median_s"]),
                        "-",
                    ],
                ],
            ),
            "",
            f"With findings kept the Runs page opens in {ui['warm_median_s'] / ui['floor_median_s']:.2f}x "
            "the time a bare Streamlit page with the same table takes on this machine: the floor is what "
            "Streamlit's session start, its websocket and Chromium's render cost whatever the page does.",
            "",
            f"Kept scans found in `$LOGPROBE_CACHE_DIR/findings` after the opens: {ui['kept_scans']} "
            f"(of {ui['runs']} runs; 0 means the page did not keep its scans on disk).",
            "",
        ]
        goals.append(
            [
                f"Runs page over {ui['runs']} runs x {ui['steps']:,} steps, findings kept, "
                f"under {GOAL_UI_S:.0f} s",
                _s(ui["warm_median_s"]),
                _met(ui["warm_median_s"] < GOAL_UI_S),
            ]
        )
    out += ui_lines
    out += ["## Goals (issue 16)", "", *_report.markdown_table(["goal", "measured", "status"], goals), ""]
    out += [
        "## Every repeat (seconds)",
        "",
        *_report.markdown_table(
            ["steps", "DuckDB", "plain read", "full scan", "read", "detectors"],
            [
                [
                    f"{s['steps']:,}",
                    *(
                        " / ".join(f"{x:.3f}" for x in s["samples_s"][k])
                        for k in ("duckdb", "plain", "detect_run", "read", "detectors")
                    ),
                ]
                for s in scans
            ],
        ),
        "",
        *_report.markdown_table(
            ["steps", "tick (read + feed), ms", "kept scan tick, ms"],
            [
                [
                    f"{t['steps']:,}",
                    " / ".join(f"{x * 1e3:.1f}" for x in t["samples_s"]["tick"]),
                    " / ".join(f"{x * 1e3:.1f}" for x in t["kept_tick_samples_s"]),
                ]
                for t in ticks
            ],
        ),
        "",
        "## Checks (all passed, or there would be no report)",
        "",
        "- The DuckDB pass returns every metric with one row per step.",
        "- `metric_rows` returns steps x metrics rows; the monitor consumes every one; `detect_run` and "
        "`metric_rows` + `feed` report the same findings.",
        "- Each tick finds exactly one new file, reads its rows and nothing else, and the monitor's "
        "point count grows by exactly those rows.",
        "",
        *_report.machine_section(result["machine"]),
    ]
    return "\n".join(out)


def to_json(result: dict) -> dict:
    return {k: v for k, v in result.items() if k != "machine"} | {"machine": result["machine"]}


# ---------------------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    parser = _report.benchmark_parser("monitor", __doc__)
    _report.add_list(parser, "--steps", _report.positive_int, DEFAULT_STEPS, "run lengths to scan and tick")
    _report.add_count(parser, "--metrics", DEFAULT_METRICS, "metrics per step")
    _report.add_count(parser, "--repeats", DEFAULT_REPEATS, "timed repeats")
    _report.add_count(parser, "--ticks", DEFAULT_TICKS, "timed ticks")
    _report.add_count(parser, "--tick-steps", DEFAULT_TICK_STEPS, "steps per tick file")
    _report.add_count(parser, "--ui-runs", DEFAULT_UI_RUNS, "runs on the Runs page")
    _report.add_count(parser, "--ui-steps", DEFAULT_UI_STEPS, "steps per run there")
    _report.add_count(parser, "--ui-repeats", DEFAULT_UI_REPEATS, "later opens timed")
    parser.add_argument(
        "--ui-timeout", type=float, default=600.0, help="seconds one page open may take (default %(default)s)"
    )
    parser.add_argument("--skip-ui", action="store_true", help="do not measure the Runs page")
    parser.add_argument(
        "--tmp", type=Path, default=None, help="where to build the stores (default: a new temp dir)"
    )
    args, command = _report.parse_command(parser, argv)
    args.steps = sorted(set(args.steps))
    names = metric_names(args.metrics)
    result: dict[str, Any] = {
        "command": command,
        "machine": _report.machine_info(),
        "steps": args.steps,
        "metrics": args.metrics,
        "repeats": args.repeats,
        "ticks_n": args.ticks,
        "tick_steps": args.tick_steps,
    }
    code = 0
    with tempfile.TemporaryDirectory(prefix="logprobe-monitor-", dir=args.tmp) as tmp:
        result |= run_scan_part(args.steps, names, args.repeats, args.ticks, args.tick_steps, Path(tmp))
        if not args.skip_ui:
            try:
                result["ui"] = run_ui_part(
                    args.ui_runs, args.ui_steps, names, args.ui_repeats, args.ui_timeout, Path(tmp)
                )
            except Exception:  # the report says so; the exit code too
                trace = traceback.format_exc()
                print(trace, file=sys.stderr)
                result["ui"] = {"runs": args.ui_runs, "steps": args.ui_steps, "error": trace[-4000:]}
                code = 1
    return _report.finish(args, render(result), to_json(result), code)


if __name__ == "__main__":
    sys.exit(main())
