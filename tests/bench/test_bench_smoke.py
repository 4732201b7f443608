"""Smoke run of ``python -m bench.write_path``: it must run end to end and report sane numbers.

Speed targets are deliberately not asserted: CI machines are shared and noisy, and a benchmark
that fails a build on a slow neighbour teaches people to ignore it. What is asserted is that the
script works (so the benchmark does not rot), that its own checks passed (every logged row came
back, so the numbers are about a correct run) and that every number is positive and finite.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

from tests.conftest import json_numbers

REPO = Path(__file__).resolve().parents[2]
STEPS = 300
METRICS = 20
REPEATS = 2


def test_write_path_benchmark_smoke(tmp_path: Path) -> None:
    out = tmp_path / "RESULTS.md"
    numbers = tmp_path / "results.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.write_path",
            f"--steps={STEPS}",
            f"--metrics={METRICS}",
            f"--repeats={REPEATS}",
            f"--out={out}",
            f"--json={numbers}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr

    report = out.read_text(encoding="utf-8")
    assert report.startswith("# logprobe write-path benchmark")
    assert report in proc.stdout  # stdout carries the same report
    for needle in ("Run.log p50", "Run.log p99", f"read-back of {STEPS * METRICS:,} points"):
        assert needle in report
    assert report.count("| PASS |") + report.count("| MISS |") == 3
    assert "quoted, not measured here" in report
    assert f"--steps={STEPS}" in report  # the exact command is recorded

    result = json.loads(numbers.read_text(encoding="utf-8"))
    assert result["points"] == STEPS * METRICS
    assert len(result["logprobe_runs"]) == len(result["floor_runs"]) == REPEATS
    for run in result["logprobe_runs"]:
        assert run["rows_read"] == STEPS * METRICS  # the script also compared every row's value
        assert 0 < run["chart_rows"] <= METRICS * 1000

    measured = {key: result[key] for key in ("logprobe", "floor", "logprobe_runs", "floor_runs")}
    for where, value in json_numbers(measured):
        assert math.isfinite(value), where
        if ".gc_gen" in where:
            assert value >= 0, where  # a short run may see no collection at all
        else:
            assert value > 0, where


def test_chart_path_benchmark_smoke(tmp_path: Path) -> None:
    out, numbers = tmp_path / "CHART_PATH.md", tmp_path / "chart.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.chart_path",
            "--steps=3000",
            "--peer-steps=400",
            "--refreshes=3",
            f"--out={out}",
            f"--json={numbers}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    report = out.read_text(encoding="utf-8")
    assert report.startswith("# Chart-path benchmark") and "--peer-steps=400" in report
    results = json.loads(numbers.read_text(encoding="utf-8"))["results"]
    tools = {r["tool"]: r for r in results if r["steps"] == 400}
    assert set(tools) == {"logprobe", "TensorBoard EventAccumulator", "MLflow get_metric_history (SQLite)"}
    for r in results:  # each reader returned every point, first and after the refreshes
        assert r["points"] == r["steps"] + 3, r
        assert r["first_ms"] > 0 and r["refresh_ms"] > 0 and math.isfinite(r["refresh_p90_ms"])
    assert any(r["tool"] == "logprobe" and r["steps"] == 3000 for r in results)
