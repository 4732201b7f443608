"""Smoke run of ``python -m bench.replay``: one seed, the reference scenario, five steps, on the
real engine. The script must train it, replay it, judge it (nothing to change) and write its table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.vllm]
pytest.importorskip("vllm", reason="the vLLM extra is not installed (pip install -r requirements-vllm.txt)")


def test_replay_benchmark_smoke(tmp_path: Path) -> None:
    out, numbers = tmp_path / "replay.md", tmp_path / "replay.json"
    cmd = [sys.executable, "-m", "bench.replay", "--seeds", "0", "--scenarios", "reference", "--steps", "5"]
    cmd += ["--out", str(out), "--json", str(numbers)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "**1 of 1 replays name the change their scenario calls for.**" in out.read_text(encoding="utf-8")
    [row] = json.loads(numbers.read_text(encoding="utf-8"))["0"].values()
    assert row["ok"] and row["changes"] == {} and row["reproduced"] < 1e-5
    assert row["recorded"] <= 1.5 * row["target"]
