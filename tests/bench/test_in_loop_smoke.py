"""Smoke run of ``python -m bench.in_loop``: it must run end to end and report sane numbers.

As for the write-path benchmark, speed goals are not asserted (CI machines are shared and noisy).
What is asserted is that the script works, that its agreement check passed (so every timing is of
the same work) and that every timing is positive and finite. ``--no-compile`` keeps it well under a
minute: Inductor's first compilation alone can take 20 s on a small CPU.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TOKENS = 20_000
REPEATS = 2
CONTENDERS = {
    "logprobe `compute_mismatch`",
    "logprobe `Run.log_mismatch` (+ store rows)",
    "logprobe `Run.log_mismatch`, no signatures or sequences (as before)",
    "(a) separate reductions, float32 (as today)",
    "(a') separate reductions, float64",
    "(b) fused floor, eager",
}


def _positive(value: float) -> bool:
    return math.isfinite(value) and value > 0


def test_in_loop_benchmark_smoke(tmp_path: Path) -> None:
    out, numbers = tmp_path / "in_loop.md", tmp_path / "in_loop.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.in_loop",
            f"--tokens={TOKENS}",
            f"--repeats={REPEATS}",
            "--model-sizes=tiny",
            "--model-batch=2x64",
            "--no-compile",
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
    assert report.startswith("# logprobe in-loop benchmark")
    assert report in proc.stdout  # stdout carries the same report
    assert f"--tokens={TOKENS}" in report  # the exact command is recorded
    # vs (a), signatures' cost, vs the eager floor
    assert report.count("| MET |") + report.count("| MISSED |") == 3
    assert "torch" in report and "intra-op threads" in report

    result = json.loads(numbers.read_text(encoding="utf-8"))
    assert result["agreement"]["passed"] is True
    checked = [a for a in result["agreement"]["contenders"] if a["checked"]]
    # log_mismatch with and without signatures, (a'), eager floor
    assert len(checked) == 4 and all(a["passed"] for a in checked)

    timings = result["timings"]
    assert {t["contender"] for t in timings} == CONTENDERS
    for t in timings:
        assert t["tokens"] == TOKENS and 0 < t["valid_tokens"] <= TOKENS
        assert len(t["samples_s"]) >= REPEATS  # cheap batches get more calls
        for value in (t["median_s"], t["first_call_s"], *t["samples_s"]):
            assert _positive(value), t

    (model,) = result["models"]
    assert model["model"] == "tiny" and model["response_tokens"] > 0
    for key in ("forward_median_s", "log_mismatch_median_s", "ratio", "params_m"):
        assert _positive(model[key]), key
    for value in (*model["forward_s"], *model["log_mismatch_s"]):
        assert _positive(value)
    assert len(result["goals"]) == 3
