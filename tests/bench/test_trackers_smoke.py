"""Smoke run of ``python -m bench.trackers``: it must run end to end, and account for every tool.

No speed is asserted (shared CI machines are noisy, see test_bench_smoke.py). What is asserted: the
script works, every tool either has numbers or says why it cannot run here (a peer is never dropped
silently), every number is positive and finite, and every read-back returned every logged point.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.bench._harness import assert_numbers, run_benchmark

STEPS = 200
BIG_STEPS = 2000
METRICS = 20
TOOLS = ("logprobe", "floor", "wandb", "mlflow-sqlite", "mlflow-file", "tensorboardx", "trackio", "aim")


def test_trackers_benchmark_smoke(tmp_path: Path) -> None:
    args = [f"--steps={STEPS}", f"--big-steps={BIG_STEPS}"]
    report, result = run_benchmark("trackers", args, tmp_path, title="# ", records=f"--steps={STEPS}")
    for heading in ("## Goals", "## Write path", "## Read path", "## Versions", f"logprobe at {BIG_STEPS:,}"):
        assert heading in report, heading

    results = result["results"]
    by_tool: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        by_tool.setdefault(r["tool"], []).append(r)
    assert set(by_tool) == set(TOOLS)
    for tool, runs in by_tool.items():
        for r in runs:
            if not r["ok"]:  # a peer that cannot run here says so, in the JSON and in the report
                assert r["reason"], r
                assert "cannot run here" in report and r["reason"] in report, r
                continue
            assert r["latency"] is not None and r["durable_s"] > 0 and r["bytes_on_disk"] > 0, r
            assert r["rows_read"] + r.get("rows_dropped", 0) == r["steps"] * METRICS, (
                r
            )  # every row accounted for
            if r["read_full_s"] is not None:
                assert r["chart_points"] == r["steps"] * METRICS, r
                assert 0 < r["chart_buckets"] <= METRICS * 1000, r
            measured = {k: v for k, v in r.items() if k not in ("steps", "n_metrics", "versions")}
            assert_numbers(measured, zero_ok=lambda where: where in (".setup_s", ".rows_dropped"), what=tool)
    assert any(r["tool"] == "logprobe" and r["steps"] == BIG_STEPS and r["ok"] for r in results)
    assert len(result["goals"]) == 6
