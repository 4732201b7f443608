"""Smoke run of ``python -m bench.in_loop``: it must run end to end and report sane numbers.

As for the write-path benchmark, speed goals are not asserted (CI machines are shared and noisy).
What is asserted is that the script works, that its agreement check passed (so every timing is of
the same work) and that every timing is positive and finite. ``--no-compile`` keeps it well under a
minute: Inductor's first compilation alone can take 20 s on a small CPU.
"""

from __future__ import annotations

from pathlib import Path

from tests.bench._harness import assert_numbers, run_benchmark

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


def test_in_loop_benchmark_smoke(tmp_path: Path) -> None:
    args = [
        f"--tokens={TOKENS}",
        f"--repeats={REPEATS}",
        "--model-sizes=tiny",
        "--model-batch=2x64",
        "--no-compile",
    ]
    report, result = run_benchmark(
        "in_loop",
        args,
        tmp_path,
        title="# logprobe in-loop benchmark",
        records=f"--tokens={TOKENS}",
    )
    # vs (a), signatures' cost, vs the eager floor
    assert report.count("| MET |") + report.count("| MISSED |") == 3
    assert "torch" in report and "intra-op threads" in report

    assert result["agreement"]["passed"] is True
    checked = [a for a in result["agreement"]["contenders"] if a["checked"]]
    # log_mismatch with and without signatures, (a'), eager floor
    assert len(checked) == 4 and all(a["passed"] for a in checked)

    timings = result["timings"]
    assert {t["contender"] for t in timings} == CONTENDERS
    for t in timings:
        assert t["tokens"] == TOKENS and 0 < t["valid_tokens"] <= TOKENS
        assert len(t["samples_s"]) >= REPEATS  # cheap batches get more calls
        assert_numbers([t["median_s"], t["first_call_s"], *t["samples_s"]], what=t["contender"])

    (model,) = result["models"]
    assert model["model"] == "tiny" and model["response_tokens"] > 0
    assert_numbers(
        {key: model[key] for key in ("forward_median_s", "log_mismatch_median_s", "ratio", "params_m")},
        what="model",
    )
    assert_numbers([*model["forward_s"], *model["log_mismatch_s"]], what="model timings")
    assert len(result["goals"]) == 3
