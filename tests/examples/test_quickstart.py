"""The quickstart loop (``make demo``'s data) is a real training run whose mismatch is real."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from logprobe.storage import Store

REPO = Path(__file__).resolve().parents[2]


def test_quickstart_runs_show_the_failure_modes_they_claim(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(REPO / "examples" / "quickstart.py"), "--steps", "25", "--root", str(tmp_path)],
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    )
    store = Store(tmp_path)
    mean = {
        (r["run_id"].removeprefix("quickstart-"), r["name"]): r["v"]
        for r in store.sql("SELECT run_id, name, avg(value) AS v FROM metrics GROUP BY ALL").to_pylist()
    }
    k3 = {run: mean[(run, "mismatch/k3")] for run in ("fp32-processed", "bf16-engine", "raw-logprobs")}
    # Ordering the mechanisms imply: same-precision engine ~0, bf16 small, raw logprobs large.
    assert k3["fp32-processed"] < 1e-8
    assert 1e-8 < k3["bf16-engine"] < 1e-3
    assert k3["raw-logprobs"] > 1e-3
    assert (
        mean[("raw-logprobs", "mismatch/abs_logp_diff_mean")]
        > 10 * mean[("bf16-engine", "mismatch/abs_logp_diff_mean")]
    )
    # The healthy run learns: reward at the end clearly above the start.
    rewards = (
        store.sql(
            "SELECT step, value FROM metrics WHERE run_id = 'quickstart-fp32-processed' "
            "AND name = 'reward/mean' ORDER BY step"
        )
        .column("value")
        .to_pylist()
    )
    assert sum(rewards[-5:]) / 5 > sum(rewards[:5]) / 5 + 0.2
    engines = store.sql("SELECT run_id, logprobs_mode, dtype FROM engines ORDER BY run_id").to_pylist()
    assert {(e["run_id"], e["logprobs_mode"], e["dtype"]) for e in engines} == {
        ("quickstart-bf16-engine", "processed_logprobs", "bfloat16"),
        ("quickstart-fp32-processed", "processed_logprobs", "float32"),
        ("quickstart-raw-logprobs", "raw_logprobs", "float32"),
    }
    assert store.sql("SELECT count(*) FROM tokens")[0][0].as_py() > 0
