"""Smoke run of ``python -m bench.store_size`` at a tiny size.

No size or speed is asserted as a target; what is asserted is that the script runs end to end,
that its own checks passed (row counts after every stage, retention removed exactly the token
rows), that compaction shrank the store and its file count, and that every number is finite, so
the benchmark cannot rot unnoticed.
"""

from __future__ import annotations

import math
from pathlib import Path

from bench import store_size
from logprobe import collectors
from tests.bench._harness import assert_numbers, run_benchmark

STEPS, SEQS, SEQ_LEN, TOP_K = 30, 2, 16, 4


def test_store_size_benchmark_smoke(tmp_path: Path) -> None:
    args = [f"--steps={STEPS}", f"--seqs={SEQS}", f"--seq-len={SEQ_LEN}", f"--top-k={TOP_K}", "--repeats=2"]
    report, result = run_benchmark(
        "store_size", args, tmp_path, title="# logprobe store-size benchmark", records=f"--steps={STEPS}"
    )
    assert "## Summary: bytes per million steps" in report and "linear extrapolation" in report

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
    # sizes and counts may be 0 (no token file left); every timing measured something
    assert_numbers(result, zero_ok=lambda where: not (where.endswith("_s") or "samples_s" in where))


def test_the_workload_uses_the_collectors_names() -> None:
    mismatch = [m for m in store_size.METRICS if m.startswith("mismatch/")]
    assert set(mismatch) <= set(collectors.MISMATCH_METRICS)
    assert len(store_size.METRICS) == 16
    from logprobe.collectors._mismatch import DEFAULT_TOP_K

    assert store_size.DEFAULT_TOP_K == DEFAULT_TOP_K
