"""Smoke run of ``python -m bench.monitor`` at tiny sizes, without the browser part.

No speed is asserted (shared CI machines are noisy); what is asserted is that the script runs end
to end (its own checks raise if a scan, pass or tick returns other rows than were written) and that
every number it reports is positive and finite, so the benchmark cannot rot unnoticed.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

from tests.conftest import json_numbers

REPO = Path(__file__).resolve().parents[2]
STEPS = (500, 2000)
METRICS = 5
TICK_STEPS = 3


def test_monitor_benchmark_smoke(tmp_path: Path) -> None:
    out, numbers = tmp_path / "monitor.md", tmp_path / "monitor.json"
    args = [
        f"--steps={','.join(map(str, STEPS))}",
        f"--metrics={METRICS}",
        "--repeats=2",
        "--ticks=2",
        f"--tick-steps={TICK_STEPS}",
        "--skip-ui",
        f"--out={out}",
        f"--json={numbers}",
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "bench.monitor", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr

    report = out.read_text(encoding="utf-8")
    assert report.startswith("# logprobe monitor benchmark")
    assert report in proc.stdout
    assert f"--metrics={METRICS}" in report  # the exact command is recorded
    assert "## Full scan of one run against one DuckDB pass" in report and "## Goals (issue 16)" in report
    assert "Not measured (`--skip-ui`)" in report

    result = json.loads(numbers.read_text(encoding="utf-8"))
    assert [s["steps"] for s in result["scans"]] == list(STEPS)
    assert [t["steps"] for t in result["ticks"]] == list(STEPS)
    for scan in result["scans"]:
        assert scan["rows"] == scan["steps"] * METRICS
        assert len(scan["samples_s"]["detect_run"]) == 2
    for tick in result["ticks"]:
        assert tick["tick_rows"] == TICK_STEPS * METRICS
        assert len(tick["samples_s"]["tick"]) == len(tick["kept_tick_samples_s"]) == 2
    assert "ui" not in result
    for where, value in json_numbers(result):
        assert math.isfinite(value), where
        # finding counts may be 0 on these healthy runs; every time, size and ratio is positive
        if "findings" not in where and "finding_kinds" not in where:
            assert value > 0, where
