"""Findings are data: the watcher and the inline collector write them to the ``findings`` table as
they happen, readers take them from there, and a run nobody watches is scanned once and kept."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from logprobe import collectors, monitor, storage
from logprobe.storage import Store, Writer
from tests.storage.test_live import CompactingStore

REPO = Path(__file__).resolve().parents[2]


def _healthy_then_bad(steps: int, onset: int) -> list[float]:
    rng = np.random.default_rng(0)
    k3 = 1e-5 * np.exp(0.1 * rng.normal(size=steps))
    k3[onset:] = 0.05  # past the field's bad level
    return k3.tolist()


def test_watcher_writes_findings_as_they_happen_and_readers_take_them_from_the_table(tmp_path: Path) -> None:
    k3 = _healthy_then_bad(60, onset=30)
    store = Store(tmp_path)
    writer = Writer(tmp_path, flush_interval=0.05)
    watcher = monitor.AlertWatcher(store, monitor.AlertEngine(rules=[]), writer)
    with Writer(tmp_path) as producer:
        producer.append("runs", "live", {"name": "live", "created_at": time.time()})
        for step in range(20):
            producer.log_metrics("live", step, {"mismatch/k3": k3[step]})
    watcher.tick()
    assert storage.findings(store, ["live"]).num_rows == 0
    with Writer(tmp_path) as producer:
        for step in range(20, 60):
            producer.log_metrics("live", step, {"mismatch/k3": k3[step]})
    watcher.tick()
    writer.close()
    store.refresh()
    assert storage.monitored_runs(store) == {"live"}
    rows = storage.findings(store, ["live"]).to_pylist()
    level = [r for r in rows if r["detector"] == "threshold"]
    assert [(r["severity"], r["step_first"], r["step_detected"], r["source"]) for r in level] == [
        ("bad", 30, 32, "watcher")
    ]
    # Readers use the table: the kept-scan cache is never touched for a watched run.
    found = monitor.run_findings(store, "live")
    assert [(f.detector, f.step_first) for f in found if f.detector == "threshold"] == [("threshold", 30)]
    assert not (Path(tmp_path) / "cache").exists() and not list(monitor.findings_cache_dir(store).glob("*"))
    # The table agrees with a full scan of the same rows.
    scan = monitor.detect_run(store, "live")
    assert {(f.detector, f.step_first, f.severity) for f in scan} == {
        (f.detector, f.step_first, f.severity) for f in found
    }


def test_inline_detectors_write_findings_and_judge_against_the_reference(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    with collectors.init(run_id="healthy", root=tmp_path, alerts=True) as run:
        for step in range(24):
            run.log(step, {"mismatch/abs_logp_diff_mean": 1.2e-3 * np.exp(0.1 * rng.normal())})
    with collectors.init(run_id="bf16", root=tmp_path, alerts=True, reference="healthy") as run:
        for step in range(24):
            run.log(step, {"mismatch/abs_logp_diff_mean": 4.7e-3 * np.exp(0.1 * rng.normal())})
    store = Store(tmp_path)
    assert storage.monitored_runs(store) == {"healthy", "bf16"}
    assert monitor.reference_of(store, "bf16") == "healthy"
    assert storage.findings(store, ["healthy"]).num_rows == 0
    (row,) = storage.findings(store, ["bf16"]).to_pylist()
    assert row["detector"] == "reference" and row["step_detected"] <= 2 and row["state"] == "open"
    assert "the reference run healthy's highest level so far" in row["message"] and row["source"] == "trainer"


def test_a_run_without_a_watcher_is_scanned_once_then_only_new_files_are_read(tmp_path: Path) -> None:
    k3 = _healthy_then_bad(300, onset=250)
    with Writer(tmp_path) as producer:
        for step in range(200):
            producer.log_metrics("r", step, {"mismatch/k3": k3[step], "train/entropy": 2.0})
    kept = monitor._kept.KeptScan(Store(tmp_path), "r")
    assert kept.update() == [] and (kept.scans, kept.rows_read) == (1, 400)
    again = monitor._kept.KeptScan(Store(tmp_path), "r")  # another process or browser session
    assert again.update() == [] and (again.scans, again.rows_read) == (1, 0)
    with Writer(tmp_path) as producer:
        for step in range(200, 300):
            producer.log_metrics("r", step, {"mismatch/k3": k3[step], "train/entropy": 2.0})
    later = monitor._kept.KeptScan(Store(tmp_path), "r")
    found = later.update()
    assert (later.scans, later.updates, later.rows_read) == (1, 2, 200)
    assert [(f.detector, f.step_first) for f in found if f.detector == "threshold"] == [("threshold", 250)]
    assert found == monitor.detect_run(Store(tmp_path), "r")
    # Compaction replaces the files: the kept scan notices and starts again, same answer.
    storage.compact(tmp_path)
    after = monitor._kept.KeptScan(Store(tmp_path), "r")
    assert after.update() == found and after.scans == 2


def test_a_scan_kept_by_older_detectors_is_done_again(tmp_path: Path) -> None:
    """A kept state from before a calibration change (its version) is not resumed with the new
    detectors' arithmetic on the old baselines: the run is scanned again."""
    k3 = _healthy_then_bad(200, onset=150)
    with Writer(tmp_path) as producer:
        for step in range(200):
            producer.log_metrics("r", step, {"mismatch/k3": k3[step]})
    kept = monitor._kept.KeptScan(Store(tmp_path), "r")
    found = kept.update()
    (path,) = monitor.findings_cache_dir(Store(tmp_path)).glob("*")
    saved = json.loads(path.read_text())
    saved["state"]["version"] = 1
    path.write_text(json.dumps(saved))
    again = monitor._kept.KeptScan(Store(tmp_path), "r")
    assert again.update() == found and (again.scans, again.rows_read) == (2, 200)


def test_findings_command_json(tmp_path: Path) -> None:
    k3 = _healthy_then_bad(40, onset=20)
    with Writer(tmp_path) as producer:
        producer.append("runs", "r", {"name": "r", "created_at": time.time()})
        for step in range(40):
            producer.log_metrics("r", step, {"mismatch/k3": k3[step]})
        producer.log_metrics("r", 40, {"mismatch/k3": float("nan")})
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "logprobe.app.cli",
            "findings",
            "--root",
            str(tmp_path),
            "--run",
            "r",
            "--format",
            "json",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    # The documented contract, written out rather than read from the CLI, so that a change to it fails.
    keys = "run_id metric detector severity step_first step_last step_detected value message".split()  # noqa: SIM905
    assert all(list(r) == keys for r in rows)
    assert [(r["detector"], r["step_first"], r["severity"]) for r in rows] == [
        ("threshold", 20, "bad"),
        ("nonfinite", 40, "error"),
    ]
    assert rows[1]["value"] == "nan"
    table = subprocess.run(
        [sys.executable, "-m", "logprobe.app.cli", "findings", "--root", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert table.returncode == 0 and "threshold" in table.stdout and "2 row(s)" in table.stderr
    missing = subprocess.run(
        [sys.executable, "-m", "logprobe.app.cli", "findings", "--root", str(tmp_path), "--run", "nope"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert missing.returncode == 2 and "no run 'nope'" in missing.stderr


def test_compactions_between_listing_and_query_reach_neither_watcher_nor_kept_scan(tmp_path: Path) -> None:
    k3 = _healthy_then_bad(300, onset=250)

    def log(steps: range) -> None:
        with Writer(tmp_path) as producer:
            for step in steps:
                producer.log_metrics("live", step, {"mismatch/k3": k3[step]})

    log(range(0, 100))
    log(range(100, 150))
    store = CompactingStore(tmp_path)
    watcher = monitor.AlertWatcher(store, monitor.AlertEngine(rules=[]))
    kept = monitor._kept.KeptScan(store, "live")
    watcher.tick()
    kept.update()
    for start in (150, 200, 250):
        log(range(start, start + 25))
        log(range(start + 25, start + 50))
        merged, store.pending = store.merged, 2  # after the first listing, and again in the retry
        watcher.tick()  # must not raise
        store.refresh()  # as readers do before asking (monitor.run_findings)
        store.pending = 2
        kept.update()  # must not raise
        assert store.merged > merged and kept.rows_read > 0
    watcher.tick()
    store.refresh()
    found = kept.update()
    assert [(f.detector, f.step_first) for f in found if f.detector == "threshold"] == [("threshold", 250)]
    assert found == monitor.detect_run(Store(tmp_path), "live")
    live = watcher.monitors["live"].findings()
    assert [(f.detector, f.step_first) for f in live if f.detector == "threshold"] == [("threshold", 250)]
