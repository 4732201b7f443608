"""``logprobe``: argument parsing plus calls into ``storage``; the terminal belongs to this module."""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import duckdb
import pyarrow as pa
import pyarrow.csv as pacsv
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from logprobe import monitor, storage

FORMATS = ("table", "csv", "json")
root_option = click.option(
    "--root",
    envvar=storage.ROOT_ENV,
    default=storage.DEFAULT_ROOT,
    show_default=True,
    type=click.Path(file_okay=False),
    help=f"Data root: a folder or s3://bucket/prefix (also ${storage.ROOT_ENV}).",
)


def _check_run_ids(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """A run id from the command line names a folder under the root: refuse one that is a path."""
    for run_id in value if isinstance(value, tuple) else (value,):
        try:
            storage.check_name("run id", run_id)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None
    return value


def format_option(*choices: str) -> Any:
    """``--format``, as ``fmt``: one of ``choices`` (default: the query formats), the first by default."""
    choices = choices or FORMATS
    return click.option(
        "--format",
        "fmt",
        type=click.Choice(choices),
        default=choices[0],
        show_default=True,
        help="Output format.",
    )


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="logprobe")
def main() -> None:
    """logprobe: watch the logprob mismatch between your rollout engine and your trainer."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_PrintableFormatter("%(levelname)s %(message)s"))
    logging.basicConfig(level=logging.WARNING, handlers=[handler])


@main.command()
@root_option
@format_option()
@click.option(
    "--stale-after",
    default=300.0,
    show_default=True,
    help="Seconds without a write after which an unfinished run counts as stale.",
)
def runs(root: str, fmt: str, stale_after: float) -> None:
    """List runs: status (live / finished / stale), last step, last write, points logged."""
    with storage.Store(root) as store:
        table = storage.list_runs(store, stale_after_s=stale_after)
    table = table.select(
        ["run_id", "name", "project", "status", "last_step", "points", "processes", "age_s", "created_at"]
    )
    _emit(table, fmt)


@main.command()
@click.argument("sql")
@root_option
@format_option()
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=300.0,
    show_default=True,
    help="Stop the query after this many seconds.",
)
def query(sql: str, root: str, fmt: str, timeout: float) -> None:
    """Run one read-only SQL statement over the store.

    Tables: runs, engines, metrics, events, histograms, tokens, alerts (each with a run_id column),
    and bad_files (files skipped as unreadable). Only files under the root can be read.

    Example: logprobe query "SELECT run_id, avg(value) FROM metrics WHERE name = 'mismatch/k3' GROUP BY ALL"
    """
    with storage.Store(root, confined=True) as store:
        try:
            result = store.read_only_query(sql, timeout_s=timeout)
        except storage.QueryError as exc:
            raise click.UsageError(str(exc)) from exc
        except duckdb.Error as exc:
            raise click.ClickException(f"query failed: {exc}") from exc
    _emit(result, fmt)


_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)([dhm])")
_DURATION_DAYS = {"d": 1.0, "h": 1 / 24, "m": 1 / 1440}


def _parse_keep(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> dict[str, float]:
    """``("tokens=7d", "histograms=36h")`` as ``{"tokens": 7.0, "histograms": 1.5}`` (days).

    A unit is required: a bare ``7`` could mean days or hours, and guessing wrong deletes data.
    """
    keep: dict[str, float] = {}
    for item in value:
        table, sep, duration = item.partition("=")
        table, duration = table.strip(), duration.strip()
        if not sep or not table:
            raise click.BadParameter(f"{item!r}: expected TABLE=DURATION, e.g. tokens=7d")
        if table in keep:
            raise click.BadParameter(f"{item!r}: table {table!r} is given more than once")
        keep[table] = _duration_days(duration, item)
    try:
        return storage.check_keep(keep)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _duration_days(duration: str, item: str | None = None) -> float:
    """``7d``, ``36h`` or ``90m`` in days, or one BadParameter naming what was wrong."""
    match = _DURATION.fullmatch(duration.strip())
    if match is None:
        raise click.BadParameter(
            f"{(item or duration)!r}: duration {duration!r} must be a non-negative number followed by "
            "d (days), h (hours) or m (minutes), e.g. 7d, 36h, 90m"
        )
    return float(match.group(1)) * _DURATION_DAYS[match.group(2)]


def _every_seconds(value: str) -> float:
    seconds = _duration_days(value) * 86_400
    if seconds <= 0:
        raise click.BadParameter(f"{value!r}: the interval must be longer than zero")
    return seconds


def _stop_on_signals() -> threading.Event:
    """An event set by Ctrl-C or SIGTERM, so a long-running command stops between rounds: raised
    inside a DuckDB query, the interrupt would surface as "Query interrupted" with a traceback."""
    stopping = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopping.set())
    return stopping


def _print_retention(console: Console, report: storage.RetentionReport, keep: dict[str, float]) -> None:
    per_table = ", ".join(
        f"{table}: {t.files_deleted} files, {t.rows_deleted:,} rows (kept {_days(keep[table])})"
        for table, t in report.tables.items()
    )
    console.print(
        f"retention deleted {report.files_deleted} files ({report.rows_deleted:,} rows, "
        f"{_megabytes(report.bytes_freed)}) over {report.partitions} partitions; {per_table}; "
        f"removed {report.leftovers_removed} leftovers; {report.skipped_locked} partitions busy"
        + (f"; kept {report.kept_no_stats} files with no ts statistics" if report.kept_no_stats else "")
    )
    for path, reason in report.errors.items():
        console.print(f"[yellow]left {_term(path)} alone: {_term(reason)}[/yellow]")


def _megabytes(nbytes: int) -> str:
    return f"{nbytes / 1e6:,.1f} MB" if nbytes >= 100_000 else f"{nbytes / 1e3:,.1f} kB"


def _days(days: float) -> str:
    hours = days * 24
    if hours >= 24 and hours % 24 == 0:
        return f"{days:g}d"
    return f"{hours:g}h" if hours >= 1 else f"{hours * 60:g}m"


@main.command()
@root_option
@click.option(
    "--run",
    "run_ids",
    multiple=True,
    callback=_check_run_ids,
    help="Only this run (repeatable). Default: all runs.",
)
@click.option(
    "--min-files", default=2, show_default=True, help="Merge partitions with at least this many files."
)
@click.option(
    "--keep",
    "keep",
    multiple=True,
    metavar="TABLE=DURATION",
    callback=_parse_keep,
    help="Retention (repeatable): delete TABLE's files whose newest row is older than DURATION, "
    "in d, h or m (minutes), e.g. tokens=7d or histograms=36h; runs before the merge. Tables not "
    "named are kept.",
)
@click.option(
    "--every",
    metavar="DURATION",
    callback=lambda ctx, param, value: None if value is None else _every_seconds(value),
    help="Keep going: compact (and apply --keep) every DURATION, e.g. 10m, until Ctrl-C or SIGTERM. "
    "A long run's files then never pile up; a failed round is reported and the next one tried.",
)
def compact(
    root: str, run_ids: tuple[str, ...], min_files: int, keep: dict[str, float], every: float | None
) -> None:
    """Merge each run's small files into one file per table (safe while runs are live).

    With --keep, old files of the named tables are deleted first, so the merge does not fold old
    rows into a file with fresh ones (retention works on whole files).
    """
    console = Console(stderr=True)
    if every is None:
        try:
            _compact_round(console, root, run_ids, min_files, keep)
        except OSError as exc:
            raise click.ClickException(f"compaction failed: {exc}") from exc
        return
    stopping = _stop_on_signals()
    while not stopping.is_set():
        try:
            _compact_round(console, root, run_ids, min_files, keep)
        except OSError as exc:  # the store is unreachable for now (a bucket, an NFS mount)
            console.print(f"[yellow]compaction round failed, next in {every:g} s: {_term(exc)}[/yellow]")
        stopping.wait(every)


def _compact_round(
    console: Console, root: str, run_ids: tuple[str, ...], min_files: int, keep: dict[str, float]
) -> None:
    if keep:
        kept = storage.apply_retention(root, keep, run_ids=list(run_ids) or None)
        _print_retention(console, kept, keep)
    report = storage.compact(root, run_ids=list(run_ids) or None, min_files=min_files)
    console.print(
        f"merged {report.files_merged} files into {report.files_written} "
        f"({report.rows} rows) over {report.partitions} partitions; "
        f"removed {report.leftovers_removed} leftovers; {report.skipped_locked} partitions busy"
    )
    for path, reason in report.bad_files.items():
        console.print(f"[yellow]skipped unreadable file {_term(path)}: {_term(reason)}[/yellow]")


@main.command()
@root_option
@click.option(
    "--engine",
    default="torch",
    show_default=True,
    help="Rollout engine: torch (a PyTorch sampler, fast), vllm (the real vLLM, needs the vLLM "
    "extra), or the seed's releases, vllm==0.8.5,vllm==0.18.1 (each in the virtualenv `make "
    "engines` built: the seed's investigation, runs seed-*).",
)
@click.option("--steps", default=24, show_default=True, help="Training steps per scenario.")
@click.option("--scenarios", "scenarios", multiple=True, help="Scenario to run (repeatable). Default: all.")
@click.option("--seed", default=0, show_default=True)
def demo(root: str, engine: str, steps: int, scenarios: tuple[str, ...], seed: int) -> None:
    """Train a tiny model with GRPO once per V0-to-V1 failure mode, logging real mismatch data.

    Each scenario runs in its own process (`python -m collectors.demo`), so this command never
    imports torch or vLLM itself. Runs are written while they train: open the store meanwhile.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    if engine not in ("torch", "vllm") and not engine.startswith("vllm=="):
        raise click.BadParameter(
            f"{engine!r}: choose torch, vllm, or vllm==RELEASE[,vllm==RELEASE]", param_hint="--engine"
        )
    playable = json.loads(_demo_child("--list", "--engine", engine).stdout)
    chosen = list(scenarios) or list(playable)
    refused = [name for name in chosen if name not in playable]
    if refused:
        why = (
            "the offline vLLM engine cannot take a weight update in the middle of a batch"
            if engine in ("torch", "vllm")
            else f"the seed's runs on these releases are {', '.join(playable)}"
        )
        raise click.UsageError(f"the {engine} engine cannot play {', '.join(refused)}: {why}")
    console = Console(stderr=True)
    with Progress(
        TextColumn("{task.description:<24}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("reward {task.fields[reward]}"),
        TimeElapsedColumn(),
        console=console,
    ) as bars:
        for name in chosen:
            task = bars.add_task(name, total=steps, reward="-")
            child = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "logprobe.collectors.demo",
                    name,
                    "--engine",
                    engine,
                    "--steps",
                    str(steps),
                    "--root",
                    root,
                    "--seed",
                    str(seed),
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for line in child.stdout:
                if line.startswith("{"):
                    update = json.loads(line)
                    bars.update(task, completed=update["step"] + 1, reward=f"{update['reward']:.3f}")
            err = child.stderr.read()
            if child.wait() != 0:
                raise click.ClickException(f"scenario {name} failed:\n{err[-3000:]}")
    console.print(f"{len(chosen)} run(s) in {_term(root)}; try: logprobe runs --root {_term(root)}")


def _demo_child(*args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "logprobe.collectors.demo", *args], capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise click.ClickException(
            f"the demo trainer could not start (is torch installed?):\n{proc.stderr[-2000:]}"
        )
    return proc


@main.command()
@root_option
@click.option("--metric", default="mismatch/k3", show_default=True, help="Metric to explain.")
@click.option(
    "--runs",
    "run_ids",
    multiple=True,
    callback=_check_run_ids,
    help="Only these runs (repeatable). Default: all.",
)
@format_option()
def correlate(root: str, metric: str, run_ids: tuple[str, ...], fmt: str) -> None:
    """Rank engine flags and versions by how strongly they separate a metric across runs.

    Each run segment under one engine configuration counts once (its mean of the metric). Effect:
    Cliff's delta of the flag value with the highest median against the rest; p: exact
    Mann-Whitney. Flags that always change together are listed together, not blamed one by one.
    """
    with storage.Store(root) as store:
        segs = monitor.segments(store, metric, list(run_ids) or None)
        effects = monitor.flag_effects(segs)
    rows = [
        {
            "flag": e.flag,
            "worst value": e.high_value,
            "effect": round(e.effect, 3),
            "median ratio": None if e.median_ratio is None else float(f"{e.median_ratio:.4g}"),
            "p": round(e.p_value, 4),
            "segments": " / ".join(f"{k}: {len(v)}" for k, v in sorted(e.groups.items())),
            "confounded with": ", ".join(e.confounded_with),
        }
        for e in effects
    ]
    if not rows:
        Console(stderr=True).print(f"no flag varies across the {len(segs)} segment(s) with {_term(metric)}")
    _emit(pa.Table.from_pylist(rows) if rows else pa.table({"flag": pa.array([], pa.string())}), fmt)


@main.command()
@root_option
@click.option("--ref", required=True, callback=_check_run_ids, help="The reference run.")
@click.option("--run", "run_id", required=True, callback=_check_run_ids, help="The candidate run.")
@click.option(
    "--metrics", multiple=True, help="Metric to compare (repeatable). Default: mismatch and training."
)
@click.option(
    "--tolerance",
    "tolerances",
    multiple=True,
    metavar="METRIC=VALUE",
    help="How much worse than the reference a metric may be per step (repeatable).",
)
@format_option("md", "html")
@click.option("--out", type=click.Path(dir_okay=False), help="Write the report here instead of stdout.")
def parity(
    root: str,
    ref: str,
    run_id: str,
    metrics: tuple[str, ...],
    tolerances: tuple[str, ...],
    fmt: str,
    out: str | None,
) -> None:
    """Compare a run against a reference run step by step: distances, first divergence, verdict.

    Exits 0 when the run passes, 1 when it does not (so CI can gate on it).
    """
    limits: dict[str, float] = {}
    for item in tolerances:
        name, _, value = item.partition("=")
        try:
            limits[name] = float(value)
        except ValueError:
            raise click.BadParameter(f"{item!r}: expected METRIC=NUMBER", param_hint="--tolerance") from None
    with storage.Store(root) as store:
        try:
            report = monitor.parity(store, ref, run_id, metrics=list(metrics) or None, tolerances=limits)
        except ValueError as exc:
            raise click.UsageError(str(exc)) from exc
    text = report.to_html() if fmt == "html" else report.to_markdown()
    if out:
        with open(out, "w", encoding="utf-8") as fh:
            fh.write(text)
    else:
        click.echo(text)
    sys.exit(0 if report.passed else 1)


def streamlit_command(script: Path, host: str, port: int, *script_args: str) -> list[str]:
    """How the dashboard's Streamlit server is started (the benchmark's floor page starts the same
    way, so the two differ only in the page)."""
    return [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(script),
        "--server.headless",
        "true",
        "--server.address",
        host,
        "--server.port",
        str(port),
        "--browser.gatherUsageStats",
        "false",
        "--client.toolbarMode",
        "viewer",  # no Deploy button: the dashboard is a viewer, not an app to publish
        "--",
        *script_args,
    ]


@main.command()
@root_option
@click.option("--port", default=8501, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (0.0.0.0 to share it).")
@click.option("--rules", type=click.Path(dir_okay=False), default=None, help="Alert rules TOML to draw.")
def ui(root: str, port: int, host: str, rules: str | None) -> None:
    """Open the dashboard over the store (Streamlit; Ctrl-C to stop)."""
    missing = [name for name in ("streamlit", "plotly") if importlib.util.find_spec(name) is None]
    if missing:
        raise click.ClickException(
            f"the dashboard needs {' and '.join(missing)}, which this environment lacks: "
            "pip install 'logprobe[dashboard]' (or '.[dashboard]' in a checkout)"
        )
    script = Path(__file__).with_name("dashboard.py")
    command = streamlit_command(script, host, port, "--root", root, *(["--rules", rules] if rules else []))
    Console(stderr=True).print(f"logprobe dashboard on http://{_term(host)}:{port} over {_term(root)}")
    os.execv(sys.executable, command)


@main.group("import")
def import_() -> None:
    """Bring runs logged by other trackers into the store (names mapped where logprobe has them)."""


def _import(run: Callable[[], Any], what: str) -> None:
    """Run one importer; a source it cannot read is a usage error naming the source, not a traceback."""
    try:
        result = run()
    except (ValueError, FileNotFoundError) as exc:
        raise click.UsageError(str(exc)) from exc
    Console(stderr=True).print(
        f"imported {len(result.run_ids)} run(s), {result.points:,} points from {_term(what)}"
        + (f"; skipped {result.skipped:,} non-scalar values" if result.skipped else "")
    )
    for run_id in result.run_ids:
        click.echo(run_id)


def _tracker_import(name: str, source: str, kind: click.ParamType | None, prefix: str, ids: str) -> Any:
    """What every tracker's importer takes: ``logprobe import NAME SOURCE [--root R] [--prefix P]``,
    where run ids become ``ids`` (spelled with PREFIX)."""

    def command(fn: Callable[..., None]) -> Any:
        fn = click.option("--prefix", default=prefix, show_default=True, help=f"Run ids become {ids}.")(fn)
        return import_.command(name)(click.argument(source, type=kind)(root_option(fn)))

    return command


@_tracker_import("tensorboard", "logdir", click.Path(exists=True, file_okay=False), "tb", "PREFIX-<subdir>")
def import_tensorboard(logdir: str, root: str, prefix: str) -> None:
    """Event files under LOGDIR (one run per directory holding them)."""
    from logprobe.storage.importers import import_tensorboard as run_import

    _import(lambda: run_import(logdir, root, prefix=prefix), logdir)


@_tracker_import("mlflow", "tracking_uri", None, "mlflow", "PREFIX-<run id>")
@click.option("--experiment", "experiments", multiple=True, help="Only these experiments (repeatable).")
def import_mlflow(tracking_uri: str, root: str, experiments: tuple[str, ...], prefix: str) -> None:
    """Every run of an MLflow tracking store (sqlite:///..., a directory, or a server URL)."""
    from logprobe.storage.importers import import_mlflow as run_import

    _import(
        lambda: run_import(tracking_uri, root, experiments=list(experiments) or None, prefix=prefix),
        tracking_uri,
    )


@_tracker_import(
    "trackio", "project_db", click.Path(exists=True, dir_okay=False), "trackio", "PREFIX-<run name>"
)
def import_trackio(project_db: str, root: str, prefix: str) -> None:
    """A Trackio project's SQLite file (~/.cache/huggingface/trackio/<project>.db)."""
    from logprobe.storage.importers import import_trackio as run_import

    _import(lambda: run_import(project_db, root, prefix=prefix), project_db)


@_tracker_import("wandb", "directory", click.Path(exists=True), "wandb", "PREFIX-<project>-<run id>")
def import_wandb(directory: str, root: str, prefix: str) -> None:
    """W&B runs: a wandb/ folder, one offline-run-* or run-* folder, or its run-<id>.wandb file."""
    from logprobe.storage.importers import import_wandb as run_import

    _import(lambda: run_import(directory, root, prefix=prefix), directory)


@import_.command("prime-rl")
@click.argument("directory", type=click.Path(exists=True))
@root_option
@click.option("--run", "run_id", default=None, help="Run id (default: prime-rl-<folder name>).")
def import_prime_rl(directory: str, root: str, run_id: str | None) -> None:
    """prime-rl's per-token export (token_exports/step_N/rank_R.jsonl): every mismatch metric,
    the worst tokens and sampled sequences, as if logged by the trainer. Runs in a child process
    (torch)."""
    args = [directory, "--root", root, *(["--run", run_id] if run_id else [])]
    proc = subprocess.run(
        [sys.executable, "-m", "logprobe.collectors.prime_rl", *args], capture_output=True, text=True
    )
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        raise click.UsageError(lines[-1].removeprefix("logprobe import prime-rl: ") if lines else "failed")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    skipped = result["skipped_steps"]
    Console(stderr=True).print(
        f"imported {len(result['steps'])} step(s), {result['sequences']:,} sequences from {_term(directory)}"
        + (f"; skipped {len(skipped)} step(s) still being written (no STABLE): {skipped}" if skipped else "")
    )
    click.echo(result["run_id"])


@main.group()
def alerts() -> None:
    """Alert rules over the store: watch live runs, list what fired."""


@alerts.command("watch")
@root_option
@click.option("--rules", type=click.Path(dir_okay=False), help="TOML rule file. Default: the shipped rules.")
@click.option("--interval", default=0.5, show_default=True, help="Seconds between looks at the store.")
@click.option("--once", is_flag=True, help="Process what is there now, then exit.")
def alerts_watch(root: str, rules: str | None, interval: float, once: bool) -> None:
    """Tail every run in the store, fire and resolve alerts, record them in the alerts table."""
    try:
        engine = monitor.AlertEngine.from_file(rules) if rules else monitor.AlertEngine()
    except monitor.RuleError as exc:
        raise click.UsageError(str(exc)) from exc
    console = Console(stderr=True)

    def show(alert: monitor.Alert) -> None:
        color = "red" if alert.state == "firing" else "green"
        where = f"{_term(alert.run_id)} step {alert.step}"
        console.print(f"[{color}]{alert.state}[/{color}] {where}: {_term(alert.message)}")

    store = storage.Store(root)
    writer = storage.Writer(root, flush_interval=interval)
    watcher = monitor.AlertWatcher(store, engine, writer)
    stopping = _stop_on_signals()  # between ticks, so no tick's alerts are lost
    console.print(f"watching {_term(store.root)} with {len(engine.rules)} rule(s); Ctrl-C to stop")
    try:
        if once:
            for alert in watcher.tick():
                show(alert)
        else:
            watcher.run(interval, until=stopping.is_set, on_alert=show)
    finally:
        engine.close()
        writer.close()


@main.command("findings")
@root_option
@click.option(
    "--run", "run_ids", multiple=True, callback=_check_run_ids, help="This run (repeatable; default: all)."
)
@format_option("table", "json")
def findings(root: str, run_ids: tuple[str, ...], fmt: str) -> None:
    """What the monitor found per run: kept by a watcher or inline alerts, else scanned once and
    kept (only new files are read next time). JSON is a list of objects with run_id, metric,
    detector, severity, step_first, step_last, step_detected, value, message."""
    with storage.Store(root) as store:
        known = {r["run_id"] for r in storage.list_runs(store).to_pylist()}
        missing = [r for r in run_ids if r not in known]
        if missing:
            raise click.UsageError(f"no run {', '.join(map(repr, missing))} under {root}")
        found = [f for run_id in (run_ids or sorted(known)) for f in monitor.run_findings(store, run_id)]
    rows = [{c: getattr(f, c) for c in FINDING_COLUMNS} for f in found]
    if fmt == "json":
        # Standard JSON has no NaN or Infinity (a nonfinite finding's value): they go as strings.
        plain = [{**r, "value": r["value"] if math.isfinite(r["value"]) else str(r["value"])} for r in rows]
        click.echo(json.dumps(plain, indent=1))
        return
    _emit(pa.Table.from_pylist(rows, schema=FINDING_SCHEMA), "table")


@main.command()
@root_option
@click.option("--run", "run_id", required=True, help="The run to diagnose.")
@click.option("--reference", default=None, help="Judge against this run (default: the one the run recorded).")
@format_option("md", "json")
def diagnose(root: str, run_id: str, reference: str | None, fmt: str) -> None:
    """Name the causes of a run's mismatch, with the evidence and the fix. JSON is a list ranked by
    confidence of objects with cause, confidence, step_first, evidence, fix (and title, steps);
    an empty list for a healthy run."""
    with storage.Store(root) as store:
        known = {r["run_id"] for r in storage.list_runs(store).to_pylist()}
        for name, value in (("run", run_id), ("reference run", reference)):
            if value is not None and value not in known:
                raise click.UsageError(f"no {name} {value!r} under {root}")
        ranked = monitor.diagnose(store, run_id, reference)
    if fmt == "json":
        click.echo(json.dumps([d.as_dict() for d in ranked], indent=1))
        return
    click.echo(monitor.diagnosis_markdown(run_id, ranked))


@main.command()
@root_option
@click.option("--run", "run_id", required=True, help="The run to replay.")
@click.option(
    "--model", default=None, help="One checkpoint folder for every step (default: checkpoint events)."
)
@click.option("--step", "steps", type=int, multiple=True, help="A logged step to replay (repeatable).")
@click.option("--vary", multiple=True, help="A setting to change (repeatable; default: the applicable five).")
@click.option("--reference", default=None, help="Reach this run's level (default: the recorded reference).")
@click.option(
    "--python",
    "python",
    default=None,
    help="Interpreter hosting the engine (another vLLM), or vllm==RELEASE.",
)
@click.option(
    "--reference-python", default=None, help="Interpreter for the reference run's engine (another release)."
)
@click.option("--no-write", is_flag=True, help="Do not store the variants as runs.")
@format_option("md", "json")
def replay(
    root: str,
    run_id: str,
    model: str | None,
    steps: tuple[int, ...],
    vary: tuple[str, ...],
    reference: str | None,
    python: str | None,
    reference_python: str | None,
    no_write: bool,
    fmt: str,
) -> None:
    """Re-score a run's logged sequences on vLLM under its recorded settings and with one setting
    changed at a time; name the smallest change that brings it to its reference's level.

    JSON: {"run", "variants": [{"name", "changes", "metrics", "removed", "run_id", ...}], "levels",
    "verdict": {"changes", "level", "reference_level", "reference", "message"}}. Each variant is
    stored as a run of source ``replay``. Runs in a child process (torch, transformers, vLLM).
    """
    args = ["--root", root, "--run", run_id, "--format", fmt]
    args += ["--model", model] if model else []
    args += [a for s in steps for a in ("--step", str(s))]
    args += [a for v in vary for a in ("--vary", v)]
    args += ["--reference", reference] if reference else []
    args += ["--python", python] if python else []
    args += ["--reference-python", reference_python] if reference_python else []
    args += ["--no-write"] if no_write else []
    proc = subprocess.Popen(
        [sys.executable, "-m", "logprobe.collectors.replay", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None and proc.stdout is not None
    other: list[str] = []
    for line in proc.stderr:  # progress as JSON lines; anything else is kept for an error message
        try:
            event = json.loads(line)
        except ValueError:
            other.append(line)
            continue
        if isinstance(event, dict) and event.get("phase") == "variant":
            click.echo(f"replay {run_id}: {event['index'] + 1}/{event['total']} {event['name']}", err=True)
        elif isinstance(event, dict) and event.get("phase") == "error":
            other.append(str(event.get("error")))
    out = proc.stdout.read()
    if proc.wait() != 0:
        why = other[-1].strip().removeprefix("logprobe replay: ") if other else f"exit {proc.returncode}"
        raise click.ClickException(why)
    click.echo(out.rstrip("\n"))


FINDING_COLUMNS = (
    "run_id",
    "metric",
    "detector",
    "severity",
    "step_first",
    "step_last",
    "step_detected",
    "value",
    "message",
)
FINDING_SCHEMA = pa.schema(
    [
        (c, pa.int64() if c.startswith("step") else pa.float64() if c == "value" else pa.string())
        for c in FINDING_COLUMNS
    ]
)


@alerts.command("list")
@root_option
@format_option()
@click.option("--run", "run_ids", multiple=True, callback=_check_run_ids, help="Only this run (repeatable).")
def alerts_list(root: str, fmt: str, run_ids: tuple[str, ...]) -> None:
    """The alerts recorded so far, newest first."""
    with storage.Store(root) as store:
        table = storage.alerts(store, list(run_ids) or None).select(
            ["ts", "run_id", "step", "state", "severity", "rule", "value", "threshold", "message"]
        )
    _emit(table, fmt)


def _flat(table: pa.Table) -> pa.Table:
    """``table`` with each list, struct or map column as JSON text: CSV has no nested cells, and
    Arrow's writer refuses them ("Unsupported Type") where a post-mortem query's ``list(...)`` or
    ``histogram(...)`` is a natural thing to ask for."""
    for i, field in enumerate(table.schema):
        if pa.types.is_nested(field.type):
            cells = [None if v is None else json.dumps(v, default=str) for v in table.column(i).to_pylist()]
            table = table.set_column(i, field.name, pa.array(cells, pa.string()))
    return table


def _emit(table: pa.Table, fmt: str) -> None:
    if fmt == "csv":
        pacsv.write_csv(_flat(table), sys.stdout.buffer)
    elif fmt == "json":
        click.echo(json.dumps(table.to_pylist(), default=str, indent=1))
    else:
        view = Table(show_lines=False)
        for name in table.column_names:
            view.add_column(Text(_printable(name)), overflow="fold", no_wrap=name == "run_id")
        for row in table.to_pylist():
            # Text, not str: rich would read "[bold]" or "[/x]" in a metric name as markup.
            view.add_row(*(Text("" if v is None else _printable(_cell(v))) for v in row.values()))
        # Piped output is for reading later or grepping: never fold it to 80 columns.
        width = shutil.get_terminal_size().columns if sys.stdout.isatty() else 250
        Console(width=width).print(view)
        Console(stderr=True).print(f"{table.num_rows} row(s)")


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def _printable(text: str) -> str:
    """``text`` with control characters shown as escapes: an ESC in a metric name or a message must
    not reach the terminal (it could retitle the window, clear the screen or hide lines)."""
    return _CONTROL.sub(lambda m: ascii(m.group(0))[1:-1], text)


class _PrintableFormatter(logging.Formatter):
    """Log lines carry metric names and messages from the store: escape their control characters."""

    def format(self, record: logging.LogRecord) -> str:
        return _printable(super().format(record))


def _term(value: object) -> str:
    """User data inside a rich markup string: printable, and read as text, not markup."""
    return escape(_printable(str(value)))


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
    return str(value)


if __name__ == "__main__":
    main()
