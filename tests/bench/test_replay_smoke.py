"""Smoke run of ``python -m bench.replay``: one seed, the reference scenario, five steps, on the
real engine. The script must train it, replay it, judge it (nothing to change) and write its table."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.bench._harness import run_benchmark

pytestmark = [pytest.mark.slow, pytest.mark.vllm]
pytest.importorskip("vllm", reason="the vLLM extra is not installed (pip install -r requirements-vllm.txt)")


def test_replay_benchmark_smoke(tmp_path: Path) -> None:
    args = ["--seeds", "0", "--scenarios", "reference", "--steps", "5"]
    report, result = run_benchmark(
        "replay", args, tmp_path, title="# Replay of the vLLM demo runs", timeout=900
    )
    assert "**1 of 1 replays name the change their scenario calls for.**" in report
    [row] = result["0"].values()
    assert row["ok"] and row["changes"] == {} and row["reproduced"] < 1e-5
    assert row["recorded"] <= 1.5 * row["target"]
