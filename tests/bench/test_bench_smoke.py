"""Smoke run of ``python -m bench.write_path``: it must run end to end and report sane numbers.

Speed targets are deliberately not asserted: CI machines are shared and noisy, and a benchmark
that fails a build on a slow neighbour teaches people to ignore it. What is asserted is that the
script works (so the benchmark does not rot), that its own checks passed (every logged row came
back, so the numbers are about a correct run) and that every number is positive and finite.
"""

from __future__ import annotations

import math
from pathlib import Path

from tests.bench._harness import assert_numbers, run_benchmark

STEPS = 300
METRICS = 20
REPEATS = 2


def test_write_path_benchmark_smoke(tmp_path: Path) -> None:
    args = [f"--steps={STEPS}", f"--metrics={METRICS}", f"--repeats={REPEATS}"]
    report, result = run_benchmark(
        "write_path", args, tmp_path, title="# logprobe write-path benchmark", records=f"--steps={STEPS}"
    )
    for needle in ("Run.log p50", "Run.log p99", f"read-back of {STEPS * METRICS:,} points"):
        assert needle in report
    assert report.count("| MET |") + report.count("| MISSED |") == 3
    assert "quoted, not measured here" in report

    assert result["points"] == STEPS * METRICS
    assert len(result["logprobe_runs"]) == len(result["floor_runs"]) == REPEATS
    for run in result["logprobe_runs"]:
        assert run["rows_read"] == STEPS * METRICS  # the script also compared every row's value
        assert 0 < run["chart_rows"] <= METRICS * 1000

    measured = {key: result[key] for key in ("logprobe", "floor", "logprobe_runs", "floor_runs")}
    # a short run may see no garbage collection at all
    assert_numbers(measured, zero_ok=lambda where: ".gc_gen" in where)


def test_chart_path_benchmark_smoke(tmp_path: Path) -> None:
    args = ["--steps=3000", "--peer-steps=400", "--refreshes=3"]
    _, result = run_benchmark(
        "chart_path", args, tmp_path, title="# Chart-path benchmark", records="--peer-steps=400"
    )
    results = result["results"]
    tools = {r["tool"]: r for r in results if r["steps"] == 400}
    assert set(tools) == {"logprobe", "TensorBoard EventAccumulator", "MLflow get_metric_history (SQLite)"}
    for r in results:  # each reader returned every point, first and after the refreshes
        assert r["points"] == r["steps"] + 3, r
        assert r["first_ms"] > 0 and r["refresh_ms"] > 0 and math.isfinite(r["refresh_p90_ms"])
    assert any(r["tool"] == "logprobe" and r["steps"] == 3000 for r in results)
