"""A real TRL GRPOTrainer run (tiny local model, CPU, ``use_vllm=False``) with LogprobeCallback attached."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from logprobe.storage import TRL, Store
from tests.conftest import run_python

trl = pytest.importorskip("trl", reason="TRL is a test extra (requirements-test.txt)")
datasets = pytest.importorskip("datasets", reason="TRL depends on datasets")

from logprobe.collectors.tiny_model import build_tiny_model  # noqa: E402
from logprobe.collectors.trl import LogprobeCallback  # noqa: E402

STEPS = 3


def _reward_len(completions: list, **kwargs: object) -> list[float]:
    return [float(len(c)) / 10 for c in completions]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    model_dir = build_tiny_model(tmp_path_factory.mktemp("tiny"))
    root = tmp_path_factory.mktemp("store")
    logged: list[dict] = []

    class Keep(trl.trainer.grpo_trainer.TrainerCallback):  # what TRL itself hands to callbacks
        def on_log(self, args, state, control, logs=None, **kwargs):
            logged.append({"step": state.global_step, **(logs or {})})

    prompts = datasets.Dataset.from_dict({"prompt": ["the sum of 1 and 2 is", "count to three:"] * 8})
    config = trl.GRPOConfig(
        output_dir=str(tmp_path_factory.mktemp("out")),
        max_steps=STEPS,
        per_device_train_batch_size=4,
        num_generations=4,
        max_completion_length=8,
        logging_steps=1,
        learning_rate=1e-3,
        beta=0.04,  # a reference model, so TRL logs its KL too
        report_to=[],
        use_cpu=True,
        bf16=False,
        save_strategy="no",
        seed=0,
    )
    trainer = trl.GRPOTrainer(
        model=str(model_dir),
        reward_funcs=_reward_len,
        args=config,
        train_dataset=prompts,
        callbacks=[LogprobeCallback(root=root, project="trl-test", run_id="grpo-tiny"), Keep()],
    )
    trainer.train()
    return root, logged


def test_every_logged_metric_lands_at_its_step_under_the_mapped_name(
    trained: tuple[Path, list[dict]],
) -> None:
    root, logged = trained
    store = Store(root)
    rows = store.sql("SELECT step, name, value FROM metrics WHERE run_id = 'grpo-tiny'").to_pylist()
    stored = {(r["step"], r["name"]): r["value"] for r in rows}
    per_step = [entry for entry in logged if "loss" in entry]
    assert len(per_step) == STEPS
    checked = 0
    for entry in logged:
        for name, value in entry.items():
            if name == "step" or isinstance(value, bool) or not isinstance(value, int | float):
                continue
            target = TRL.get(name, name)
            assert stored[(entry["step"], target)] == pytest.approx(float(value), rel=0, abs=0), name
            checked += 1
    assert checked >= STEPS * 15  # TRL logs ~20 scalars per step
    names = {r["name"] for r in rows}
    assert {"reward/mean", "reward/std", "train/kl_ref", "train/entropy", "train/loss"} <= names
    assert {"response/length_mean", "train/grad_norm", "train/learning_rate"} <= names
    assert "clip_ratio/region_mean" in names  # kept apart: a clip fraction, not the engine gap
    assert not {"reward", "kl", "entropy", "loss"} & names  # mapped, not duplicated


def test_the_run_records_trainer_config_and_the_name_map(trained: tuple[Path, list[dict]]) -> None:
    store = Store(trained[0])
    (run,) = store.sql("SELECT name, project, config FROM runs WHERE run_id = 'grpo-tiny'").to_pylist()
    config = json.loads(run["config"])
    assert run["project"] == "trl-test" and config["trainer"] == "GRPOConfig"
    assert config["args"]["num_generations"] == 4 and config["args"]["beta"] == 0.04
    assert config["model_config"]["model_type"] == "llama"
    (event,) = store.sql("SELECT payload FROM events WHERE kind = 'name_map' ORDER BY ts LIMIT 1").to_pylist()
    assert json.loads(event["payload"])["names"]["reward"] == "reward/mean"
    kinds = store.sql("SELECT kind FROM events WHERE run_id = 'grpo-tiny'").column("kind").to_pylist()
    assert "run_end" in kinds  # the callback closed the run it opened


@pytest.mark.vllm
@pytest.mark.slow
def test_attached_to_a_vllm_trainer_it_records_the_engine_and_the_full_mismatch(tmp_path: Path) -> None:
    pytest.importorskip("vllm", reason="vLLM is a test extra (requirements-vllm.txt)")
    root = tmp_path / "store"
    run_python(
        Path(__file__).with_name("trl_vllm_child.py").read_text(encoding="utf-8"),
        str(tmp_path),
        str(root),
        timeout=600,
    )
    store = Store(root)
    (engine,) = store.sql("SELECT engine, vllm_version, logprobs_mode, fingerprint FROM engines").to_pylist()
    assert engine["engine"].startswith("vllm") and engine["logprobs_mode"] == "processed_logprobs"
    rows = store.sql("SELECT step, name, value FROM metrics").to_pylist()
    by_name: dict[str, dict[int, float]] = {}
    for r in rows:  # (TRL's end-of-training summary repeats "epoch" at the last step)
        if r["name"].startswith(("mismatch/", "sampling/")):
            assert r["step"] not in by_name.setdefault(r["name"], {}), ("two values at one step", r)
        by_name.setdefault(r["name"], {})[r["step"]] = r["value"]
    full = ("mismatch/k3", "mismatch/prob_pearson", "mismatch/ess", "mismatch/abs_logp_diff_mean")
    for name in full:
        assert sorted(by_name[name]) == [1, 2, 3], name  # every batch, at the step TRL reports it
    # TRL's own numbers are kept under its names once the full set is logged, and agree with it.
    trl_gap = by_name["sampling/sampling_logp_difference/mean"]
    for step, value in trl_gap.items():
        assert value == pytest.approx(by_name["mismatch/abs_logp_diff_mean"][step], rel=1e-3)
    assert 0 < by_name["mismatch/k3"][1] < 1e-3  # same weights on both sides: small but real (bf16 KV etc.)
    tokens = store.sql("SELECT count(*) AS n, count(token_text) AS texts FROM tokens").to_pylist()[0]
    assert tokens["n"] > 0 and tokens["texts"] == tokens["n"]
