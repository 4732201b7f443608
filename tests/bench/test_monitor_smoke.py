"""Smoke run of ``python -m bench.monitor`` at tiny sizes, without the browser part.

No speed is asserted (shared CI machines are noisy); what is asserted is that the script runs end
to end (its own checks raise if a scan, pass or tick returns other rows than were written) and that
every number it reports is positive and finite, so the benchmark cannot rot unnoticed.
"""

from __future__ import annotations

from pathlib import Path

from tests.bench._harness import assert_numbers, run_benchmark

STEPS = (500, 2000)
METRICS = 5
TICK_STEPS = 3


def test_monitor_benchmark_smoke(tmp_path: Path) -> None:
    args = [
        f"--steps={','.join(map(str, STEPS))}",
        f"--metrics={METRICS}",
        "--repeats=2",
        "--ticks=2",
        f"--tick-steps={TICK_STEPS}",
        "--skip-ui",
    ]
    report, result = run_benchmark(
        "monitor", args, tmp_path, title="# logprobe monitor benchmark", records=f"--metrics={METRICS}"
    )
    assert "## Full scan of one run against one DuckDB pass" in report and "## Goals (issue 16)" in report
    assert "Not measured (`--skip-ui`)" in report

    assert [s["steps"] for s in result["scans"]] == list(STEPS)
    assert [t["steps"] for t in result["ticks"]] == list(STEPS)
    for scan in result["scans"]:
        assert scan["rows"] == scan["steps"] * METRICS
        assert len(scan["samples_s"]["detect_run"]) == 2
    for tick in result["ticks"]:
        assert tick["tick_rows"] == TICK_STEPS * METRICS
        assert len(tick["samples_s"]["tick"]) == len(tick["kept_tick_samples_s"]) == 2
    assert "ui" not in result
    # finding counts may be 0 on these healthy runs; every time, size and ratio is positive
    assert_numbers(result, zero_ok=lambda where: "findings" in where or "finding_kinds" in where)
