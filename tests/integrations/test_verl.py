"""The verl tracking backend on metric dicts shaped exactly like verl's, and driven by verl's own
``Tracking`` (verl 0.9.1, requirements-verl.txt).

Names and value types follow verl's trainer: numpy and torch scalars, Python floats, and non-scalar
entries it also passes to every backend (names from docs/research/metrics-in-the-field.md).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from logprobe.collectors.verl import LogprobeBackend
from logprobe.storage import VERL, Store
from tests.conftest import run_python


def _verl_step(step: int) -> dict:
    rng = np.random.default_rng(step)
    return {
        "training/global_step": step,
        "training/epoch": 0,
        "training/rollout_probs_diff_valid": 1,
        "training/rollout_probs_diff_max": float(rng.uniform(0.1, 0.9)),
        "training/rollout_probs_diff_mean": np.float32(rng.uniform(1e-3, 1e-2)),
        "training/rollout_probs_diff_std": float(rng.uniform(1e-3, 1e-2)),
        "training/rollout_actor_probs_pearson_corr": float(rng.uniform(0.98, 1.0)),
        "rollout_corr/kl": float(rng.normal(0, 1e-3)),
        "rollout_corr/k3_kl": torch.tensor(float(rng.uniform(1e-5, 1e-3)), dtype=torch.float64),
        "rollout_corr/chi2_token": float(rng.uniform(0, 0.1)),
        "rollout_corr/rollout_is_mean": float(rng.uniform(0.9, 1.1)),
        "rollout_corr/rollout_is_eff_sample_size": float(rng.uniform(0.8, 1.0)),
        "actor/pg_clipfrac": np.float64(rng.uniform(0, 0.2)),
        "actor/ppo_kl": float(rng.normal(0, 1e-3)),
        "actor/entropy": torch.tensor([float(rng.uniform(0.5, 2.0))]),
        "actor/grad_norm": float(rng.uniform(0.1, 5)),
        "actor/pg_loss": float(rng.normal()),
        "critic/score/mean": float(rng.uniform(0, 1)),
        "response_length/mean": float(rng.uniform(100, 500)),
        "timing_s/gen": float(rng.uniform(1, 10)),
        "val-aux/generations": ["a completion", "another"],  # not a metric: skipped
    }


def test_verl_metrics_are_mapped_and_stored_exactly(tmp_path: Path) -> None:
    config = OmegaConf.create(
        {
            "trainer": {"logger": ["console", "logprobe"], "total_training_steps": 5},
            "actor_rollout_ref": {"rollout": {"name": "vllm", "logprobs_mode": "processed_logprobs"}},
            "algorithm": {"rollout_correction": {"rollout_is": None}},
        }
    )
    backend = LogprobeBackend("verl-proj", "exp-1", config, root=tmp_path, run_id="verl-run")
    sent = [_verl_step(step) for step in range(1, 6)]
    for step, data in enumerate(sent, start=1):
        backend.log(data=data, step=step)
    backend.finish()

    store = Store(tmp_path)
    rows = store.sql("SELECT step, policy_version, name, value FROM metrics").to_pylist()
    stored = {(r["step"], r["name"]): r["value"] for r in rows}
    assert all(r["policy_version"] == r["step"] for r in rows)
    for step, data in enumerate(sent, start=1):
        for name, value in data.items():
            if isinstance(value, list):
                assert (step, name) not in stored
                continue
            expected = float(value.item() if hasattr(value, "item") else value)
            assert stored[(step, VERL.get(name, name))] == expected, name
    names = {r["name"] for r in rows}
    assert {"mismatch/k3", "mismatch/k1", "mismatch/abs_prob_diff_mean", "mismatch/prob_pearson"} <= names
    assert {"train/clip_frac", "train/ppo_kl", "train/entropy", "reward/mean"} <= names
    assert "rollout_corr/rollout_is_mean" in names  # truncated IS weights: kept under verl's name
    assert "training/rollout_probs_diff_std" in names and "timing_s/gen" in names

    (run,) = store.sql("SELECT project, name, config FROM runs").to_pylist()
    assert (run["project"], run["name"]) == ("verl-proj", "exp-1")
    assert json.loads(run["config"])["actor_rollout_ref"]["rollout"]["logprobs_mode"] == "processed_logprobs"
    events = store.sql("SELECT kind, payload FROM events ORDER BY ts").to_pylist()
    name_maps = [json.loads(e["payload"]) for e in events if e["kind"] == "name_map"]
    assert len(name_maps) == 1 and name_maps[0]["names"]["rollout_corr/k3_kl"] == "mismatch/k3"
    assert events[-1]["kind"] == "run_end"


def test_the_monitor_reads_verl_runs_with_logprobe_rules(tmp_path: Path) -> None:
    from logprobe import monitor

    backend = LogprobeBackend("p", "bad-engine", None, root=tmp_path, run_id="verl-bad")
    for step in range(1, 11):
        backend.log(data={"training/rollout_probs_diff_mean": 0.03, "actor/pg_clipfrac": 0.1}, step=step)
    backend.finish()
    found = monitor.detect_run(Store(tmp_path), "verl-bad")
    assert any(f.metric == "mismatch/abs_prob_diff_mean" and f.severity == "bad" for f in found)


VERL_CHILD = """
import json, sys
from verl.utils.tracking import Tracking
from logprobe.collectors.verl import LogprobeBackend

root, steps = sys.argv[1], json.loads(sys.argv[2])
tracking = Tracking(project_name="verl-proj", experiment_name="exp-real", default_backend="console")
tracking.logger["logprobe"] = LogprobeBackend("verl-proj", "exp-real", None, root=root, run_id="verl-real")
for step, data in enumerate(steps, start=1):
    tracking.log(data=data, step=step)
tracking.finish()  # verl finishes only its own backends: ours closes its run at exit
"""


def test_verls_own_tracking_drives_the_backend(tmp_path: Path) -> None:
    """verl 0.9.1's real ``Tracking`` (requirements-verl.txt), in its own process, with the console
    backend beside ours: every scalar arrives mapped and exact, and the run is closed although
    ``Tracking.finish`` never calls our ``finish``."""
    verl_site = Path(sys.prefix) / "verl"  # make's --target folder (requirements-verl.txt says why)
    if not (verl_site / "verl" / "utils" / "tracking.py").exists():
        pytest.skip(f"verl is a test extra installed by make into {verl_site} (requirements-verl.txt)")
    sent = [
        {
            k: float(v.item() if hasattr(v, "item") else v)
            for k, v in _verl_step(s).items()
            if not isinstance(v, list)
        }
        for s in range(1, 4)
    ]
    proc = run_python(
        VERL_CHILD, str(tmp_path), json.dumps(sent), timeout=180, env={"PYTHONPATH": str(verl_site)}
    )
    assert "rollout_corr/k3_kl" in proc.stdout  # verl's console backend printed the same step
    store = Store(tmp_path)
    rows = store.sql("SELECT step, name, value FROM metrics WHERE run_id = 'verl-real'").to_pylist()
    stored = {(r["step"], r["name"]): r["value"] for r in rows}
    assert stored == {(s, VERL.get(n, n)): v for s, data in enumerate(sent, start=1) for n, v in data.items()}
    kinds = store.sql("SELECT kind FROM events WHERE run_id = 'verl-real' ORDER BY ts").column(0).to_pylist()
    assert kinds[-1] == "run_end"
