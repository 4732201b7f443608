"""The fingerprint reader on configs shaped like other vLLM releases.

Only one vLLM can be installed in an environment, so older and newer releases' config shapes are
stand-ins here (plain objects with the attributes those releases have, per docs/research/vllm-hooks.md);
the real engine is exercised in tests/engines/test_vllm.py.
"""

from __future__ import annotations

import enum
from types import SimpleNamespace

import pytest
import torch

from logprobe.collectors._values import to_plain
from logprobe.collectors.vllm import engine_config, fingerprint
from logprobe.collectors.vllm._config import vllm_env


class _Level(enum.Enum):
    PIECEWISE = 3


def _old_v1_config() -> SimpleNamespace:
    """Roughly vLLM 0.9: no logprobs_mode, compilation ``level`` instead of ``mode``, no head_dtype."""
    return SimpleNamespace(
        model_config=SimpleNamespace(dtype=torch.bfloat16, seed=None, enforce_eager=False, quantization=None),
        cache_config=SimpleNamespace(enable_prefix_caching=None, cache_dtype="auto"),
        scheduler_config=SimpleNamespace(async_scheduling=False),
        parallel_config=SimpleNamespace(tensor_parallel_size=2),
        compilation_config=SimpleNamespace(level=_Level.PIECEWISE),
        device_config=SimpleNamespace(device_type="cuda"),
    )


class _Raises:
    @property
    def logprobs_mode(self) -> str:
        raise RuntimeError("half-initialised config")


def test_missing_fields_are_null_never_a_crash() -> None:
    engine = SimpleNamespace(vllm_config=_old_v1_config())
    row = engine_config(engine)
    assert row["logprobs_mode"] is None and row["async_scheduling"] is False
    assert row["compilation_mode"] == "PIECEWISE" and row["cudagraph_mode"] is None
    assert row["dtype"] == "bfloat16" and row["lm_head_dtype"] == "bfloat16"  # head follows dtype
    assert row["tensor_parallel_size"] == 2 and row["pipeline_parallel_size"] is None
    assert row["device"] == "cuda" and row["enable_prefix_caching"] is None
    assert len(row["fingerprint"]) == 16


def test_a_property_that_raises_is_recorded_as_null() -> None:
    config = _old_v1_config()
    config.model_config = _Raises()
    assert engine_config(SimpleNamespace(vllm_config=config))["logprobs_mode"] is None


def test_unknown_objects_are_rejected_with_a_clear_error() -> None:
    with pytest.raises(TypeError, match="cannot find a vLLM config on dict"):
        engine_config({})


def test_fingerprint_ignores_ids_ports_and_paths_but_not_settings() -> None:
    base = {
        "model_config": {"dtype": "bfloat16", "logprobs_mode": "raw_logprobs"},
        "parallel_config": {"data_parallel_master_port": 1234},
        "instance_id": "abc",
        "env": {"VLLM_DIST_IDENT": "x1"},
    }
    moved = {
        **base,
        "parallel_config": {"data_parallel_master_port": 999},
        "instance_id": "zzz",
        "env": {"VLLM_DIST_IDENT": "x2"},
    }
    changed = {**base, "model_config": {"dtype": "bfloat16", "logprobs_mode": "processed_logprobs"}}
    assert fingerprint(base) == fingerprint(moved)
    assert fingerprint(base) != fingerprint(changed)


def test_env_secrets_are_redacted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLLM_API_KEY", "sk-secret")
    monkeypatch.setenv("VLLM_BATCH_INVARIANT", "1")
    env = vllm_env()
    assert env["VLLM_API_KEY"] == "<redacted>" and env["VLLM_BATCH_INVARIANT"] == "1"
    assert engine_config(SimpleNamespace(vllm_config=_old_v1_config()))["batch_invariant"] is True


def test_a_run_and_the_vllm_reader_fingerprint_the_same_settings_alike(tmp_path) -> None:
    """One rule: Run.log_engine of a config without a fingerprint hashes it as the vLLM reader does,
    so ports and ids do not make two fingerprints of one engine."""
    import logprobe

    flags = {"model_config": {"dtype": torch.bfloat16, "logprobs_mode": "raw_logprobs"}, "seed": 0}
    moved = {**flags, "instance_id": "other", "parallel_config": {"data_parallel_master_port": 4}}
    with logprobe.init(run_id="r", root=tmp_path) as run:
        logged = run.log_engine({"engine": "vllm", "flags": flags})
        logged_moved = run.log_engine({"engine": "vllm", "flags": moved})
        whole = run.log_engine({"engine": "vllm", "seed": 1})  # no flags: the whole config is hashed
    assert logged == logged_moved == fingerprint(flags)
    assert whole == fingerprint({"engine": "vllm", "seed": 1}) != logged


def test_to_plain_handles_dtypes_enums_sets_and_addresses() -> None:
    plain = to_plain({"d": torch.float32, "e": _Level.PIECEWISE, "s": {3, 1}, "f": lambda: 0})
    assert plain["d"] == "float32" and plain["e"] == "PIECEWISE" and plain["s"] == [1, 3]
    assert " at 0x" not in plain["f"]
