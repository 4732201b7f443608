"""Smoke runs of ``python -m bench.scale`` and ``python -m bench.live_latency`` at tiny sizes.

No speed is asserted (shared CI machines are noisy); what is asserted is that both scripts run end
to end, that their own correctness checks passed (each writes ``checks_passed`` only after every
query result matched what was written or logged), and that every number they report is positive
and finite, so the benchmarks cannot rot unnoticed.
"""

from __future__ import annotations

from pathlib import Path

from tests.bench._harness import assert_numbers, run_benchmark

RUNS, STEPS = 3, 2000
LIVE_STEPS = 5


def test_scale_benchmark_smoke(tmp_path: Path) -> None:
    args = [f"--runs={RUNS}", f"--steps={STEPS}", "--repeats=2"]
    report, result = run_benchmark(
        "scale", args, tmp_path, title="# logprobe scale benchmark", records=f"--steps={STEPS}"
    )
    assert "## Growth with steps per run" in report and "## Growth with runs" in report

    assert result["checks_passed"] is True
    assert result["build_points"] == RUNS * STEPS * 20
    # Sweeps of a tenth, three tenths and all of the full size (runs: 1 and 3).
    assert [p["steps"] for p in result["steps_sweep"]] == [200, 600, 2000]
    assert [p["runs"] for p in result["runs_sweep"]] == [1, 3]
    for point in [*result["steps_sweep"], *result["runs_sweep"]]:
        assert point["points"] == point["runs"] * point["steps"] * 20
        assert len(point["samples_s"]["chart_1"]) == 2
    # a flat query may come out at a slope below zero
    assert_numbers(result, negative_ok=lambda where: where.startswith(".exponents"))


def test_live_latency_benchmark_smoke(tmp_path: Path) -> None:
    args = [f"--steps={LIVE_STEPS}", "--flush-intervals=0.1"]
    _, result = run_benchmark(
        "live_latency",
        args,
        tmp_path,
        title="# logprobe live-latency benchmark",
        records="--flush-intervals=0.1",
    )
    assert result["checks_passed"] is True
    (run,) = result["results"]
    assert run["flush_interval_s"] == 0.1 and run["steps"] == LIVE_STEPS
    assert run["visible"]["n"] == run["alert"]["n"] == LIVE_STEPS
    assert len(run["visible_s"]) == len(run["alert_s"]) == LIVE_STEPS
    # two independent pollers: the alert may come before the reader saw the value
    assert_numbers(result, negative_ok=lambda where: where.endswith(".alert_after_visible_ms"))
