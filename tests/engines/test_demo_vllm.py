"""The demo with the real vLLM engine: reference vs raw logprobs, the separation the torch demo shows.

Measured here (6 steps): reference |dlogp| ~0.0013 (bf16 body, fp32 head on the engine; fp32
trainer), raw-logprobs ~0.15; k3 ~1e-6 vs ~0.02. Asserted: raw above 0.03, reference below 0.01.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from logprobe.storage import Store
from tests.conftest import logprobe_cli, scenario_args

pytestmark = [pytest.mark.vllm, pytest.mark.slow]
pytest.importorskip("vllm", reason="the vLLM extra is not installed (pip install -r requirements-vllm.txt)")


def test_vllm_demo_separates_raw_from_processed_logprobs(tmp_path: Path) -> None:
    runs = scenario_args(["reference", "raw-logprobs"])
    logprobe_cli("demo", "--engine", "vllm", "--steps", "6", "--root", tmp_path, *runs)
    store = Store(tmp_path)
    rows = store.sql(
        "SELECT run_id, avg(value) FILTER (WHERE name = 'mismatch/abs_logp_diff_mean') AS d, "
        "avg(value) FILTER (WHERE name = 'mismatch/k3') AS k3 FROM metrics GROUP BY run_id"
    ).to_pylist()
    by_run = {r["run_id"]: r for r in rows}
    ref, raw = by_run["demo-vllm-reference"], by_run["demo-vllm-raw-logprobs"]
    assert ref["d"] < 0.01 < 0.03 < raw["d"], (ref, raw)
    assert raw["k3"] > 100 * ref["k3"], (ref, raw)
    engines = store.sql("SELECT run_id, engine, logprobs_mode, lm_head_dtype FROM engines ORDER BY run_id")
    assert [(e["engine"], e["logprobs_mode"], e["lm_head_dtype"]) for e in engines.to_pylist()] == [
        ("vllm-cpu", "raw_logprobs", "float32"),
        ("vllm-cpu", "processed_logprobs", "float32"),
    ]
    updates = store.sql("SELECT count(*) FROM events WHERE kind = 'weight_update'")[0][0].as_py()
    assert updates == 2 * 6
