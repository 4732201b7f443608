"""Smoke run of ``python -m bench.detection`` at tiny sizes on a tiny demo-like store.

Detection power is not asserted beyond what is robust at any size (a fault a million times the
reference level is caught at once): the point is that the script runs end to end (so the report
does not rot) and that every number it reports is finite and non-negative.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from logprobe import storage
from tests.bench._harness import assert_numbers, run_benchmark

STEPS = 24


def write_demo_like(root: Path) -> None:
    """Three 24-step runs shaped like the demo's: two healthy, one with raw logprobs from step 0."""
    rng = np.random.default_rng(0)
    with storage.Writer(root) as w:
        for scenario, level in (("reference", 1e-7), ("all-fixed", 1e-7), ("raw-logprobs", 0.1)):
            run_id = f"demo-torch-{scenario}"
            for step in range(STEPS):
                noise = float(np.exp(0.25 * rng.standard_normal()))
                w.log_metrics(
                    run_id,
                    step,
                    {
                        "mismatch/k3": level**2 * noise,
                        "mismatch/abs_logp_diff_mean": level * noise,
                        "mismatch/prob_pearson": 1.0 - level * noise,
                        "train/kl_ref": 0.05 * step + 0.01 * float(rng.standard_normal()),
                    },
                )


def test_detection_benchmark_smoke(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_demo_like(data / "torch-s0")
    args = [
        f"--data={data}",
        "--engines=torch",
        "--seeds=0",
        "--steps=500",
        "--synthetic-steps=400",
        "--replicates=2",
        "--ref-steps=50",
        "--change-at=250",
        "--delay-seeds=2",
    ]
    text, result = run_benchmark(
        "detection", args, tmp_path, title="# Detection power of the monitor", records="--delay-seeds=2"
    )
    for heading in ("## Goals", "## 1a.", "## 1b.", "## 2. Detection delay", "## 3. Demo scenarios"):
        assert heading in text
    assert_numbers(result, zero_ok=lambda where: True)  # false flags and delays may well be 0
    boot = result["bootstrap"]["all"]
    assert boot["mismatch/k3"]["steps"] == 2 * 500  # both healthy runs, stretched
    assert result["synthetic"]
    assert all(cell["seeds"] == 2 for cell in result["delays"].values())
    # a fault a million times the reference's level is flagged at once
    raw = result["demo"]["raw-logprobs | torch"]
    assert raw["within"] == 1 and raw["seeds"] == 1
