"""The plain PyTorch + vLLM example (examples/vllm_loop.py) runs end to end on the real engine."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from logprobe.storage import Store

pytest.importorskip("vllm", reason="vLLM is the rollout engine of this example (requirements-vllm.txt)")
pytestmark = [pytest.mark.vllm, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]


def _run(root: Path, mode: str) -> str:
    proc = subprocess.run(
        [
            sys.executable,
            "examples/vllm_loop.py",
            "--steps",
            "2",
            "--root",
            str(root),
            "--logprobs-mode",
            mode,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip().splitlines()[-1].removeprefix("run: ")


def test_example_logs_engine_mismatch_rl_stats_and_weight_updates(tmp_path: Path) -> None:
    runs = {mode: _run(tmp_path, mode) for mode in ("processed_logprobs", "raw_logprobs")}
    store = Store(tmp_path)
    k3 = {
        r["run_id"]: r["k3"]
        for r in store.sql(
            "SELECT run_id, avg(value) AS k3 FROM metrics WHERE name = 'mismatch/k3' GROUP BY ALL"
        ).to_pylist()
    }
    # Same fp32 weights on both sides: processed logprobs agree to float noise; raw ones (before
    # temperature 0.7) do not.
    assert k3[runs["processed_logprobs"]] < 1e-9
    assert k3[runs["raw_logprobs"]] > 1e3 * max(k3[runs["processed_logprobs"]], 1e-12)
    run = runs["processed_logprobs"]
    names = set(
        store.sql("SELECT DISTINCT name FROM metrics WHERE run_id = ?", [run]).column("name").to_pylist()
    )
    assert {
        "train/clip_frac",
        "train/loss",
        "reward/mean",
        "rollout/tokens",
        "mismatch/prob_pearson",
    } <= names
    (engine,) = store.sql(
        "SELECT engine, logprobs_mode, flags FROM engines WHERE run_id = ?", [run]
    ).to_pylist()
    assert engine["logprobs_mode"] == "processed_logprobs" and json.loads(engine["flags"])
    kinds = store.sql("SELECT kind FROM events WHERE run_id = ?", [run]).column("kind").to_pylist()
    assert kinds.count("weight_update") == 2 and "run_end" in kinds
    assert store.sql("SELECT count(*) AS n FROM tokens WHERE run_id = ?", [run])[0][0].as_py() > 0
