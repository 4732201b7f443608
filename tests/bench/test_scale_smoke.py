"""Smoke runs of ``python -m bench.scale`` and ``python -m bench.live_latency`` at tiny sizes.

No speed is asserted (shared CI machines are noisy); what is asserted is that both scripts run end
to end, that their own correctness checks passed (each writes ``checks_passed`` only after every
query result matched what was written or logged), and that every number they report is positive
and finite, so the benchmarks cannot rot unnoticed.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

from tests.conftest import json_numbers

REPO = Path(__file__).resolve().parents[2]
RUNS, STEPS = 3, 2000
LIVE_STEPS = 5


def _run(module: str, args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr
    return proc


def test_scale_benchmark_smoke(tmp_path: Path) -> None:
    out, numbers = tmp_path / "scale.md", tmp_path / "scale.json"
    args = [f"--runs={RUNS}", f"--steps={STEPS}", "--repeats=2", f"--out={out}", f"--json={numbers}"]
    proc = _run("bench.scale", args, timeout=300)

    report = out.read_text(encoding="utf-8")
    assert report.startswith("# logprobe scale benchmark")
    assert report in proc.stdout
    assert f"--steps={STEPS}" in report  # the exact command is recorded
    assert "## Growth with steps per run" in report and "## Growth with runs" in report

    result = json.loads(numbers.read_text(encoding="utf-8"))
    assert result["checks_passed"] is True
    assert result["build_points"] == RUNS * STEPS * 20
    # Sweeps of a tenth, three tenths and all of the full size (runs: 1 and 3).
    assert [p["steps"] for p in result["steps_sweep"]] == [200, 600, 2000]
    assert [p["runs"] for p in result["runs_sweep"]] == [1, 3]
    for point in [*result["steps_sweep"], *result["runs_sweep"]]:
        assert point["points"] == point["runs"] * point["steps"] * 20
        assert len(point["samples_s"]["chart_1"]) == 2
    for where, value in json_numbers(result):
        assert math.isfinite(value), where
        if not where.startswith(".exponents"):  # a flat query may come out at a slope below zero
            assert value > 0, where


def test_live_latency_benchmark_smoke(tmp_path: Path) -> None:
    out, numbers = tmp_path / "live.md", tmp_path / "live.json"
    args = [f"--steps={LIVE_STEPS}", "--flush-intervals=0.1", f"--out={out}", f"--json={numbers}"]
    proc = _run("bench.live_latency", args, timeout=300)

    report = out.read_text(encoding="utf-8")
    assert report.startswith("# logprobe live-latency benchmark")
    assert report in proc.stdout
    assert "--flush-intervals=0.1" in report

    result = json.loads(numbers.read_text(encoding="utf-8"))
    assert result["checks_passed"] is True
    (run,) = result["results"]
    assert run["flush_interval_s"] == 0.1 and run["steps"] == LIVE_STEPS
    assert run["visible"]["n"] == run["alert"]["n"] == LIVE_STEPS
    assert len(run["visible_s"]) == len(run["alert_s"]) == LIVE_STEPS
    for where, value in json_numbers(result):
        assert math.isfinite(value), where
        if not where.endswith(".alert_after_visible_ms"):  # two independent pollers: may be < 0
            assert value > 0, where
