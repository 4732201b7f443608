"""The ``logprobe`` CLI, run as a real subprocess over a real store."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from logprobe.storage import Writer

LOGPROBE = [str(Path(sys.executable).with_name("logprobe"))]


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([*LOGPROBE, *args], capture_output=True, text=True, timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(f"logprobe {args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture
def root(tmp_path: Path) -> Path:
    for run_id, offset in (("alpha", 0.0), ("beta", 10.0)):
        with Writer(tmp_path) as writer:
            writer.append("runs", run_id, {"name": run_id, "project": "p", "created_at": time.time()})
            writer.append("events", run_id, {"kind": "run_start"})
            for step in range(5):
                writer.log_metrics(run_id, step, {"mismatch/k3": offset + step})
        with Writer(tmp_path) as writer:  # a second process: two files per partition
            writer.append("events", run_id, {"kind": "run_end"})
    return tmp_path


def test_every_command_has_help() -> None:
    assert "runs" in cli("--help").stdout
    for command in ("runs", "query", "compact"):
        out = cli(command, "--help").stdout
        assert "--root" in out and len(out.splitlines()) > 4


def test_runs_lists_each_run_with_status(root: Path) -> None:
    rows = json.loads(cli("runs", "--root", str(root), "--format", "json").stdout)
    assert {r["run_id"]: (r["status"], r["last_step"], r["points"]) for r in rows} == {
        "alpha": ("finished", 4, 5),
        "beta": ("finished", 4, 5),
    }
    table = cli("runs", "--root", str(root)).stdout
    assert "alpha" in table and "finished" in table


def test_root_comes_from_the_environment(root: Path) -> None:
    proc = subprocess.run(
        [*LOGPROBE, "runs", "--format", "csv"],
        capture_output=True,
        text=True,
        env={"LOGPROBE_DIR": str(root), "PATH": "/usr/bin:/bin"},
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "alpha" in proc.stdout


def test_query_formats(root: Path) -> None:
    sql = "SELECT run_id, avg(value) AS k3 FROM metrics GROUP BY run_id ORDER BY run_id"
    as_json = json.loads(cli("query", sql, "--root", str(root), "--format", "json").stdout)
    assert as_json == [{"run_id": "alpha", "k3": 2.0}, {"run_id": "beta", "k3": 12.0}]
    as_csv = cli("query", sql, "--root", str(root), "--format", "csv").stdout.splitlines()
    assert as_csv[0] == '"run_id","k3"' and as_csv[1] == '"alpha",2'
    assert "beta" in cli("query", sql, "--root", str(root)).stdout
    # A nested column (a list per run) is a JSON cell in CSV, not Arrow's "Unsupported Type".
    nested = "SELECT run_id, list(value ORDER BY step) AS v FROM metrics GROUP BY run_id ORDER BY run_id"
    rows = list(csv.reader(cli("query", nested, "--root", str(root), "--format", "csv").stdout.splitlines()))
    assert rows[0] == ["run_id", "v"] and rows[1][0] == "alpha" and isinstance(json.loads(rows[1][1]), list)


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("SELECT 1; SELECT 2", "exactly one SQL statement"),
        ("COPY metrics TO '/tmp/stolen.csv'", "only read-only SELECT"),
        ("ATTACH '/tmp/other.db'", "only read-only SELECT"),
        ("INSTALL httpfs", "only read-only SELECT"),
        ("LOAD httpfs", "only read-only SELECT"),
        ("SET enable_external_access = true", "only read-only SELECT"),
        ("CREATE TABLE x AS SELECT 1", "only read-only SELECT"),
        ("SELECT * FROM read_csv('/etc/passwd')", "disabled by configuration"),
        ("SELECT * FROM read_parquet('/tmp/**/*.parquet')", "disabled by configuration"),
        ("SELEC nonsense", "cannot parse"),
    ],
)
def test_query_refuses_escapes_with_a_clear_message(root: Path, sql: str, message: str) -> None:
    proc = cli("query", sql, "--root", str(root), check=False)
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_query_reports_bad_files_by_name(root: Path) -> None:
    bad = root / "metrics" / "run_id=alpha" / "broken-00000001.parquet"
    bad.write_bytes(b"not parquet")
    proc = cli("query", "SELECT count(*) AS n FROM metrics", "--root", str(root), "--format", "json")
    assert json.loads(proc.stdout) == [{"n": 10}]
    assert "broken-00000001.parquet" in proc.stderr
    listed = json.loads(
        cli("query", "SELECT path FROM bad_files", "--root", str(root), "--format", "json").stdout
    )
    assert listed == [{"path": str(bad)}]


def test_compact_merges_and_reports(root: Path) -> None:
    before = sorted(p.name for p in root.rglob("*.parquet"))
    proc = cli("compact", "--root", str(root), "--run", "alpha")
    assert "merged" in proc.stderr
    after_alpha = list((root / "events" / "run_id=alpha").glob("*.parquet"))
    assert len(after_alpha) == 1 and after_alpha[0].name.startswith("compact-")
    assert len(list((root / "events" / "run_id=beta").glob("*.parquet"))) == 2  # untouched
    assert len(before) > len(list(root.rglob("*.parquet")))
    rows = json.loads(
        cli("query", "SELECT count(*) AS n FROM metrics", "--root", str(root), "--format", "json").stdout
    )
    assert rows == [{"n": 10}]


def test_compact_every_keeps_a_live_run_at_a_few_files_and_stops_on_sigterm(tmp_path: Path) -> None:
    compactor = subprocess.Popen(
        [*LOGPROBE, "compact", "--root", str(tmp_path), "--every", "0.01m"],  # every 0.6 s
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        with Writer(tmp_path, flush_interval=0.05) as writer:
            for step in range(300):
                writer.log_metrics("long", step, {"loss": float(step)})
                time.sleep(0.01)
        time.sleep(1.5)  # one more round after the last file
        files = list((tmp_path / "metrics" / "run_id=long").glob("*.parquet"))
    finally:
        compactor.terminate()
        _, err = compactor.communicate(timeout=30)
    assert compactor.returncode == 0, err  # SIGTERM ends it between rounds, without a traceback
    assert err.count("merged") >= 3 and "Traceback" not in err
    assert len(files) == 1
    rows = json.loads(
        cli("query", "SELECT count(*) AS n FROM metrics", "--root", str(tmp_path), "--format", "json").stdout
    )
    assert rows == [{"n": 300}]


def test_compact_every_refuses_a_zero_interval(tmp_path: Path) -> None:
    proc = subprocess.run(
        [*LOGPROBE, "compact", "--root", str(tmp_path), "--every", "0m"], capture_output=True, text=True
    )
    assert proc.returncode == 2 and "longer than zero" in proc.stderr
