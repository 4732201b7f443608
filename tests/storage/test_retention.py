"""Retention: old files of the bulky tables go, fresh ones and every other table stay, and a
compaction killed mid-way never brings deleted rows back."""

from __future__ import annotations

import fcntl
import math
import os
import subprocess
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from logprobe import storage
from logprobe.app.cli import main as cli_main
from logprobe.storage import Store, Writer
from tests.conftest import LOGPROBE

DAY = 86_400.0
NOW = 1_800_000_000.0  # a fixed "now", so no test depends on the clock


def _tokens(writer: Writer, run_id: str, steps: range, ts: float, per_step: int = 4) -> None:
    for step in steps:
        for pos in range(per_step):
            writer.append(
                "tokens",
                run_id,
                {"step": step, "ts": ts, "position": pos, "token_id": pos, "log_ratio": 0.1 * pos},
            )


def _write_run(root: Path, run_id: str = "r", *, old_days: float = 10.0) -> None:
    """Two token files (one ``old_days`` old, one an hour old), old metrics and histograms, and the
    run's ``runs`` and ``engines`` rows, all dated ``old_days`` ago."""
    old = NOW - old_days * DAY
    with Writer(root, writer_id=f"{run_id}-1-old") as writer:
        writer.append("runs", run_id, {"name": run_id, "created_at": old})
        writer.append("engines", run_id, {"ts": old, "engine": "vllm"})
        _tokens(writer, run_id, range(0, 5), old)
        for step in range(5):
            writer.log_metrics(run_id, step, {"mismatch/k3": float(step)}, ts=old)
        writer.append("histograms", run_id, {"step": 0, "ts": old, "name": "log_ratio", "bin": 0})
    with Writer(root, writer_id=f"{run_id}-2-fresh") as writer:
        _tokens(writer, run_id, range(5, 8), NOW - 3600)


def _count(root: Path, table: str, run_id: str | None = None) -> int:
    where = f"WHERE run_id = '{run_id}'" if run_id else ""
    with Store(root) as store:
        return store.sql(f"SELECT count(*) AS n FROM {table} {where}").column("n")[0].as_py()


def _files(root: Path, table: str, run_id: str = "r") -> list[Path]:
    return sorted((root / table / f"run_id={run_id}").glob("*.parquet"))


def test_old_token_files_go_fresh_ones_and_other_tables_stay(tmp_path: Path) -> None:
    _write_run(tmp_path)
    old_file, fresh_file = _files(tmp_path, "tokens")
    old_size = old_file.stat().st_size
    metric_files = _files(tmp_path, "metrics")

    report = storage.apply_retention(tmp_path, {"tokens": 7, "histograms": 30}, now=NOW)

    assert not old_file.exists() and fresh_file.exists()
    assert _files(tmp_path, "metrics") == metric_files  # not named: untouched, however old
    assert len(_files(tmp_path, "histograms")) == 1  # 10 days old, kept for 30
    assert (report.files_deleted, report.rows_deleted, report.bytes_freed) == (1, 20, old_size)
    assert report.tables["tokens"] == storage._retention.TableRetention(1, 20, old_size)
    assert report.tables["histograms"] == storage._retention.TableRetention(0, 0, 0)
    assert report.partitions == 2 and report.kept_no_stats == 0 and report.skipped_locked == 0
    assert _count(tmp_path, "tokens") == 12
    assert _count(tmp_path, "metrics") == 5
    assert _count(tmp_path, "runs") == 1 and _count(tmp_path, "engines") == 1
    # Nothing left to do: running it again deletes nothing.
    assert storage.apply_retention(tmp_path, {"tokens": 7}, now=NOW).files_deleted == 0


def test_the_newest_row_decides_and_the_cutoff_is_exact(tmp_path: Path) -> None:
    with Writer(tmp_path) as writer:  # one file: rows 30 days old and one row 6 days old
        _tokens(writer, "r", range(3), NOW - 30 * DAY)
        _tokens(writer, "r", range(3, 4), NOW - 6 * DAY, per_step=1)
    with Writer(tmp_path) as writer:  # one file exactly 7 days old: not older than the cutoff
        _tokens(writer, "r", range(4, 5), NOW - 7 * DAY, per_step=1)
    assert storage.apply_retention(tmp_path, {"tokens": 7}, now=NOW).files_deleted == 0
    assert storage.apply_retention(tmp_path, {"tokens": 7}, now=NOW + 1).files_deleted == 1
    # The mixed file's newest row is 6 days old: it stays at 6.5 days and goes at 5.9.
    assert storage.apply_retention(tmp_path, {"tokens": 6.5}, now=NOW).files_deleted == 0
    report = storage.apply_retention(tmp_path, {"tokens": 5.9}, now=NOW)
    assert (report.files_deleted, report.rows_deleted) == (1, 13)
    assert _files(tmp_path, "tokens") == []


def test_only_the_runs_asked_for(tmp_path: Path) -> None:
    _write_run(tmp_path, "a")
    _write_run(tmp_path, "b")
    report = storage.apply_retention(tmp_path, {"tokens": 7}, now=NOW, run_ids=["b"])
    assert report.files_deleted == 1
    assert _count(tmp_path, "tokens", "a") == 32 and _count(tmp_path, "tokens", "b") == 12


def test_a_killed_compaction_does_not_bring_deleted_rows_back(tmp_path: Path) -> None:
    for steps in (range(0, 3), range(3, 6), range(6, 9)):
        with Writer(tmp_path) as writer:
            _tokens(writer, "r", steps, NOW - 10 * DAY)
    originals = {p.name: p.read_bytes() for p in _files(tmp_path, "tokens")}
    storage.compact(tmp_path, tables=("tokens",))
    # Put the originals back: a compaction killed after its rename, before its deletes. The merged
    # file hides them, so the store still holds each row once.
    for name, data in originals.items():
        (tmp_path / "tokens" / "run_id=r" / name).write_bytes(data)
    assert _count(tmp_path, "tokens") == 36

    report = storage.apply_retention(tmp_path, {"tokens": 7}, now=NOW)

    # Deleting only the merged file would have unhidden the three originals (36 rows again).
    assert report.leftovers_removed == 3
    assert report.files_deleted == 1 and report.rows_deleted == 36
    assert _files(tmp_path, "tokens") == []
    assert _count(tmp_path, "tokens") == 0


def test_files_without_ts_statistics_are_kept_and_counted(tmp_path: Path) -> None:
    part = tmp_path / "tokens" / "run_id=r"
    part.mkdir(parents=True)
    # An older writer's file with no ts column, and one whose ts is all NULL: age unknown.
    pq.write_table(pa.table({"step": [1], "token_id": [5]}), part / "old-00000000.parquet")
    null_ts = pa.table({"step": [2], "ts": pa.nulls(1, pa.timestamp("us", tz="UTC"))})
    pq.write_table(null_ts, part / "old-00000001.parquet")
    report = storage.apply_retention(tmp_path, {"tokens": 0}, now=NOW)
    assert report.kept_no_stats == 2 and report.files_deleted == 0
    assert len(_files(tmp_path, "tokens")) == 2


def test_unreadable_files_are_left_alone_and_reported(tmp_path: Path) -> None:
    _write_run(tmp_path)
    bad = tmp_path / "tokens" / "run_id=r" / "junk-00000009.parquet"
    bad.write_bytes(b"not parquet")
    report = storage.apply_retention(tmp_path, {"tokens": 7}, now=NOW)
    assert str(bad) in report.bad_files and bad.exists()
    assert report.files_deleted == 1


@pytest.mark.parametrize(
    ("keep", "message"),
    [
        ({"runs": 7}, "'runs'"),
        ({"engines": 7}, "'engines'"),
        ({"tokenz": 7}, "unknown table 'tokenz'"),
        ({"tokens": -1}, "'tokens' must be >= 0"),
        ({"tokens": math.nan}, "'tokens' must be >= 0"),
        ({"tokens": "7"}, "'tokens' must be a number"),
        ({"tokens": True}, "'tokens' must be a number"),
    ],
)
def test_refusals_name_the_table_and_touch_nothing(tmp_path: Path, keep: dict, message: str) -> None:
    _write_run(tmp_path)
    before = sorted(tmp_path.rglob("*.parquet"))
    # The bad entry comes after a valid one: nothing may be deleted before the refusal.
    with pytest.raises(ValueError, match=message):
        storage.apply_retention(tmp_path, {"histograms": 0, **keep}, now=NOW)
    assert sorted(tmp_path.rglob("*.parquet")) == before


def test_a_partition_being_compacted_is_skipped(tmp_path: Path) -> None:
    _write_run(tmp_path)
    fd = os.open(tmp_path / "tokens" / "run_id=r" / ".compact.lock", os.O_CREAT | os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        report = storage.apply_retention(tmp_path, {"tokens": 7}, now=NOW)
    finally:
        os.close(fd)
    assert report.skipped_locked == 1 and report.files_deleted == 0
    assert len(_files(tmp_path, "tokens")) == 2
    assert storage.apply_retention(tmp_path, {"tokens": 7}, now=NOW).files_deleted == 1  # lock gone


def test_an_empty_or_missing_root_is_fine(tmp_path: Path) -> None:
    report = storage.apply_retention(tmp_path / "nothing", {"tokens": 1})
    assert report.files_deleted == 0 and report.partitions == 0


# ----------------------------------------------------------------------------------------- CLI


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("tokens", "expected TABLE=DURATION"),
        ("=7d", "expected TABLE=DURATION"),
        ("tokens=7", "must be a non-negative number followed by d (days)"),
        ("tokens=7w", "must be a non-negative number followed by d (days)"),
        ("tokens=-1d", "must be a non-negative number followed by d (days)"),
        ("tokens=d", "must be a non-negative number followed by d (days)"),
        ("runs=7d", "retention on table 'runs' is refused"),
        ("engines=1h", "retention on table 'engines' is refused"),
        ("token=7d", "unknown table 'token'"),
    ],
)
def test_cli_keep_refuses_bad_values(tmp_path: Path, value: str, message: str) -> None:
    _write_run(tmp_path)
    before = sorted(tmp_path.rglob("*.parquet"))
    result = CliRunner().invoke(cli_main, ["compact", "--root", str(tmp_path), "--keep", value])
    assert result.exit_code == 2, result.output
    assert "Invalid value for '--keep'" in result.output and message in result.output
    assert sorted(tmp_path.rglob("*.parquet")) == before  # refused before anything ran


def test_cli_keep_refuses_a_table_given_twice(tmp_path: Path) -> None:
    args = ["compact", "--root", str(tmp_path), "--keep", "tokens=7d", "--keep", "tokens=1d"]
    result = CliRunner().invoke(cli_main, args)
    assert result.exit_code == 2 and "given more than once" in result.output


@pytest.mark.parametrize(
    ("value", "kept"),
    [
        ("tokens=11d", 2),
        ("tokens=7d", 1),
        ("tokens=240.5h", 2),
        ("tokens=239.5h", 1),
        ("tokens=61m", 1),
        ("tokens=59m", 0),
        ("tokens=0.5d", 1),
    ],
)
def test_cli_keep_durations(tmp_path: Path, value: str, kept: int) -> None:
    """Durations in d, h and m, applied to token files 10 days and 1 hour older than the clock."""
    now = time.time()
    with Writer(tmp_path) as writer:
        _tokens(writer, "r", range(2), now - 10 * DAY)
    with Writer(tmp_path) as writer:
        _tokens(writer, "r", range(2, 3), now - 3600)
    # --min-files 9: nothing is merged, so the files left are exactly what retention kept.
    args = ["compact", "--root", str(tmp_path), "--min-files", "9", "--keep", value]
    result = CliRunner().invoke(cli_main, args)
    assert result.exit_code == 0, result.output
    assert len(_files(tmp_path, "tokens")) == kept


def test_cli_compact_with_keep_for_real(tmp_path: Path) -> None:
    """The installed ``logprobe`` in a subprocess: retention first, then the merge."""
    now = time.time()
    old = now - 10 * DAY
    with Writer(tmp_path) as writer:
        writer.append("runs", "r", {"name": "r", "created_at": old})
        _tokens(writer, "r", range(5), old)
        writer.log_metrics("r", 0, {"mismatch/k3": 1.0}, ts=old)
    with Writer(tmp_path) as writer:
        _tokens(writer, "r", range(5, 7), now - 60)
        writer.log_metrics("r", 1, {"mismatch/k3": 2.0}, ts=old)
    with Writer(tmp_path) as writer:
        _tokens(writer, "r", range(7, 8), now - 30)

    proc = subprocess.run(
        [LOGPROBE, "compact", "--root", str(tmp_path), "--keep", "tokens=7d", "--keep", "histograms=36h"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    said = " ".join(proc.stderr.split())  # the console wraps long lines
    assert "retention deleted 1 files (20 rows" in said
    assert "tokens: 1 files, 20 rows (kept 7d), histograms: 0 files, 0 rows (kept 36h)" in said
    assert said.index("retention deleted") < said.index("merged 4 files into 2")  # fresh tokens, metrics
    (tokens,) = _files(tmp_path, "tokens")
    assert tokens.name.startswith("compact-")
    with Store(tmp_path) as store:
        steps = store.sql("SELECT DISTINCT step FROM tokens ORDER BY step").column("step").to_pylist()
    assert steps == [5, 6, 7]
    assert _count(tmp_path, "metrics") == 2  # metrics are kept, however old


def test_sampled_sequences_age_out_like_tokens(tmp_path: Path) -> None:
    """The ``sequences`` table (whole sampled sequences, lists per row) is bulky like ``tokens``."""
    for name, ts in (("old", NOW - 10 * DAY), ("fresh", NOW - 3600)):
        with Writer(tmp_path, writer_id=f"r-{name}") as writer:
            writer.append(
                "sequences",
                "r",
                {
                    "step": 0,
                    "ts": ts,
                    "seq_index": 0,
                    "token_ids": [1, 2, 3],
                    "trainer_logprobs": [-0.1, -0.2, math.nan],
                    "rollout_logprobs": [-0.1, -0.25, -0.3],
                },
            )
    report = storage.apply_retention(tmp_path, {"sequences": 7}, now=NOW)
    assert report.tables["sequences"].files_deleted == 1 and report.tables["sequences"].rows_deleted == 1
    with Store(tmp_path) as store:
        (row,) = store.sql("SELECT token_ids, rollout_logprobs FROM sequences").to_pylist()
    assert row == {"token_ids": [1, 2, 3], "rollout_logprobs": [-0.1, -0.25, -0.3]}
