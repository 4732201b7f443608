"""Smoke run of ``python -m bench.diagnosis`` over the session's torch demo store (seed 0).

The store is the one every demo test reads, linked in as ``torch-s0``; the script must diagnose
every scenario as it says (exit 0), write its table and JSON, and say which store it did not find.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from logprobe.collectors.demo import SCENARIOS
from tests.bench._harness import run_benchmark

pytestmark = pytest.mark.slow


def test_diagnosis_benchmark_smoke(demo_root: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "torch-s0").symlink_to(demo_root, target_is_directory=True)
    args = ["--data", str(data), "--engines", "torch", "--seeds", "0", "1"]
    report, result = run_benchmark(
        "diagnosis", args, tmp_path, title="# Diagnosis of the demo faults", timeout=600
    )
    assert f"**{len(SCENARIOS)} of {len(SCENARIOS)} runs diagnosed as their scenario says.**" in report
    assert "no demo store" in report and "torch-s1" in report  # the missing seed is said, not hidden
    verdicts = result["torch"]["0"]
    assert set(verdicts) == set(SCENARIOS)
    for name, v in verdicts.items():
        assert v["ok"] and v["expected"] == SCENARIOS[name].cause
        assert v["top"] == SCENARIOS[name].cause
