"""Smoke run of ``python -m bench.store_size`` at a tiny size.

No size or speed is asserted as a target; what is asserted is that the script runs end to end,
that its own checks passed (row counts after every stage, retention removed exactly the token
rows), that compaction shrank the store and its file count, and that every number is finite, so
the benchmark cannot rot unnoticed.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

from bench import store_size
from logprobe import collectors
from tests.conftest import json_numbers

REPO = Path(__file__).resolve().parents[2]
STEPS, SEQS, SEQ_LEN, TOP_K = 30, 2, 16, 4


def test_store_size_benchmark_smoke(tmp_path: Path) -> None:
    out, numbers = tmp_path / "store_size.md", tmp_path / "store_size.json"
    args = [
        f"--steps={STEPS}",
        f"--seqs={SEQS}",
        f"--seq-len={SEQ_LEN}",
        f"--top-k={TOP_K}",
        "--repeats=2",
        f"--out={out}",
        f"--json={numbers}",
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "bench.store_size", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr

    report = out.read_text(encoding="utf-8")
    assert report.startswith("# logprobe store-size benchmark")
    assert report in proc.stdout
    assert f"--steps={STEPS}" in report  # the exact command is recorded
    assert "## Summary: bytes per million steps" in report and "linear extrapolation" in report

    result = json.loads(numbers.read_text(encoding="utf-8"))
    assert result["checks_passed"] is True
    profiles = {p["name"]: p for p in result["profiles"]}
    assert {name: p["tokens_per_step"] for name, p in profiles.items()} == {
        "batch": SEQS * SEQ_LEN,
        "worst": TOP_K,
    }
    for p in profiles.values():
        written, compacted, kept = (p["stages"][s] for s in ("written", "compacted", "retention"))
        assert written["rows"]["metrics"] == STEPS * len(store_size.METRICS)
        assert written["rows"]["tokens"] == STEPS * p["tokens_per_step"]
        assert written["rows"]["histograms"] == math.ceil(STEPS / 10) * (len(collectors.HIST_EDGES) + 1)
        # One file per table per step as written (histograms every 10th step), one per table after.
        assert written["tables"]["metrics"]["files"] == STEPS
        assert compacted["files"] == 6 and kept["files"] == 5
        assert compacted["bytes"] < written["bytes"]
        assert kept["tables"]["tokens"] == {"files": 0, "bytes": 0, "allocated": 0}
        assert kept["rows"]["tokens"] == 0 and p["retention"]["rows_deleted"] == written["rows"]["tokens"]
        assert p["retention"]["bytes_freed"] == compacted["tables"]["tokens"]["bytes"]
        assert kept["bytes"] == compacted["bytes"] - p["retention"]["bytes_freed"]
    for where, value in json_numbers(result):
        assert math.isfinite(value) and value >= 0, where
        if where.endswith("_s") or "samples_s" in where:
            assert value > 0, where  # every timing measured something


def test_the_workload_uses_the_collectors_names() -> None:
    mismatch = [m for m in store_size.METRICS if m.startswith("mismatch/")]
    assert set(mismatch) <= set(collectors.MISMATCH_METRICS)
    assert len(store_size.METRICS) == 16
    from logprobe.collectors._mismatch import DEFAULT_TOP_K

    assert store_size.DEFAULT_TOP_K == DEFAULT_TOP_K
