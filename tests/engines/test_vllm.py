"""The vLLM collector against the real engine (vllm-cpu), in process, with a tiny local model.

Engines start once per module (in-process mode keeps each to seconds). The trainer side is a real
transformers float32 recompute of the same tokens. Nothing of vLLM is mocked.
"""

from __future__ import annotations

import json
import os
import time
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
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; the default asks for most of the RAM
vllm = pytest.importorskip(
    "vllm", reason="the vLLM extra is not installed (pip install -r requirements-vllm.txt)"
)

TEMPERATURE = 0.7
STARTED: list[float] = []


def _engine(model_dir: Path, **overrides: Any) -> Any:
    args: dict[str, Any] = dict(
        model=str(model_dir),
        dtype="bfloat16",
        max_model_len=1024,
        enforce_eager=True,
        distributed_executor_backend="uni",
        seed=0,
        worker_extension_cls=lpv.WORKER_EXTENSION,
        disable_log_stats=False,
    )
    args.update(overrides)
    return vllm.LLM(**args)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    STARTED.append(time.time())  # the first fixture this module uses: its clock starts here
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="module")
def engine_processed(model_dir: Path) -> Any:
    """processed logprobs, prefix caching on, fp32 lm_head (the V1 'fixed' settings, but caching)."""
    return _engine(
        model_dir,
        logprobs_mode="processed_logprobs",
        enable_prefix_caching=True,
        hf_overrides={"head_dtype": "float32"},
    )


@pytest.fixture(scope="module")
def engine_raw(model_dir: Path) -> Any:
    """raw logprobs (V1's default), prefix caching off, bf16 lm_head."""
    return _engine(model_dir, logprobs_mode="raw_logprobs", enable_prefix_caching=False)


@pytest.fixture(scope="module")
def trainer(model_dir: Path) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


def _recompute(model: Any, outputs: Any, batch: lpv.RolloutBatch) -> torch.Tensor:
    """The trainer's logprobs of the sampled tokens: log_softmax(logits / T), float32."""
    rows = []
    for prompt, ids, mask in zip(batch.prompt_token_ids, batch.token_ids, batch.mask, strict=True):
        n = int(mask.sum())
        full = torch.tensor([prompt + ids[:n].tolist()])
        with torch.no_grad():
            logits = model(full).logits[0, len(prompt) - 1 : len(prompt) - 1 + n].float()
        lp = torch.log_softmax(logits / TEMPERATURE, dim=-1).gather(1, ids[:n, None]).squeeze(1)
        rows.append(torch.nn.functional.pad(lp.double(), (0, batch.mask.shape[1] - n)))
    return torch.stack(rows)


def _sampling(**kw: Any) -> Any:
    return vllm.SamplingParams(temperature=TEMPERATURE, max_tokens=24, logprobs=0, seed=7, **kw)


def _prompts(n: int = 8) -> list[str]:
    return [f"the quick brown fox {i} sum the digits" for i in range(n)]


def test_fingerprints_record_exactly_the_flags_that_differ(
    tmp_path: Path, model_dir: Path, engine_processed: Any, engine_raw: Any
) -> None:
    with collectors.init(run_id="fp", root=tmp_path, source="rollout") as run:
        a = lpv.record_engine(run, engine_processed, step=0)
        b = lpv.record_engine(run, engine_raw, step=0)
    columns = {k for k in a if k not in ("flags", "fingerprint")}
    differ = {k for k in columns if a[k] != b[k]}
    assert differ == {"logprobs_mode", "enable_prefix_caching", "lm_head_dtype"}, differ
    assert (a["logprobs_mode"], b["logprobs_mode"]) == ("processed_logprobs", "raw_logprobs")
    assert (a["enable_prefix_caching"], b["enable_prefix_caching"]) == (True, False)
    # ground truth from the workers: fp32 logits from a bf16 weight vs bf16 throughout
    assert (a["lm_head_dtype"], b["lm_head_dtype"]) == ("float32", "bfloat16")
    assert a["lm_head_weight_dtype"] == b["lm_head_weight_dtype"] == "bfloat16"
    assert a["flags"]["worker"][0]["worker_class"] == "CPUWorker"
    assert a["vllm_version"] == vllm.__version__ and a["engine"] == "vllm-cpu"
    assert a["engine_generation"] == "v1" and a["device"] == "cpu" and a["dtype"] == "bfloat16"
    assert a["async_scheduling"] is False and a["enforce_eager"] is True and a["seed"] == 0
    assert a["fingerprint"] != b["fingerprint"]
    assert lpv.engine_config(engine_processed, a["flags"]["worker"])["fingerprint"] == a["fingerprint"]

    rows = (
        Store(tmp_path)
        .sql(
            "SELECT logprobs_mode, enable_prefix_caching, lm_head_dtype, fingerprint, flags FROM engines "
            "ORDER BY logprobs_mode"
        )
        .to_pylist()
    )
    assert [(r["logprobs_mode"], r["enable_prefix_caching"], r["lm_head_dtype"]) for r in rows] == [
        ("processed_logprobs", True, "float32"),
        ("raw_logprobs", False, "bfloat16"),
    ]
    flags = json.loads(rows[0]["flags"])
    assert flags["model_config"]["hf_overrides"] == {"head_dtype": "float32"}
    assert flags["env"]["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"


def test_processed_logprobs_match_the_trainer_and_raw_ones_do_not(
    tmp_path: Path, engine_processed: Any, engine_raw: Any, trainer: Any
) -> None:
    gaps = {}
    with collectors.init(run_id="modes", root=tmp_path) as run:
        rollout = run.with_source("rollout")
        for step, (name, llm) in enumerate((("processed", engine_processed), ("raw", engine_raw))):
            outputs = llm.generate(_prompts(), _sampling(), use_tqdm=False)
            batch = lpv.log_rollout(rollout, step, outputs)
            trainer_lp = _recompute(trainer, outputs, batch)
            stats = run.log_mismatch(step, trainer_lp, batch.logprobs, batch.mask, token_ids=batch.token_ids)
            gaps[name] = stats["mismatch/abs_logp_diff_mean"]
    assert gaps["processed"] < 0.01, gaps
    assert gaps["raw"] > 0.03, gaps
    store = Store(tmp_path)
    rollout_rows = store.sql(
        "SELECT step, name, value FROM metrics WHERE source = 'rollout' AND name = 'rollout/tokens'"
    ).to_pylist()
    assert len(rollout_rows) == 2 and all(0 < r["value"] <= 8 * 24 for r in rollout_rows)
    worst = store.sql("SELECT count(*) FROM tokens WHERE step = 1")[0][0].as_py()
    assert worst == 16


def test_logprob_forms_list_flat_and_topk_agree(engine_processed: Any) -> None:
    prompts = _prompts(3)
    forms = {
        "list0": _sampling(),
        "flat0": _sampling(flat_logprobs=True),
        "list3": vllm.SamplingParams(temperature=TEMPERATURE, max_tokens=24, logprobs=3, seed=7),
        "flat3": vllm.SamplingParams(
            temperature=TEMPERATURE, max_tokens=24, logprobs=3, seed=7, flat_logprobs=True
        ),
    }
    batches = {
        k: lpv.rollout_batch(engine_processed.generate(prompts, sp, use_tqdm=False))
        for k, sp in forms.items()
    }
    ref = batches["list0"]
    assert (
        type(
            engine_processed.generate(prompts[:1], forms["flat0"], use_tqdm=False)[0].outputs[0].logprobs
        ).__name__
        == "FlatLogprobs"
    )
    for name, batch in batches.items():
        assert torch.equal(batch.token_ids, ref.token_ids), name
        assert torch.equal(batch.mask, ref.mask), name
        torch.testing.assert_close(batch.logprobs, ref.logprobs, rtol=0, atol=1e-6, msg=name)
    cumulative = engine_processed.generate(prompts, forms["list0"], use_tqdm=False)
    for row, out in enumerate(cumulative):
        assert ref.logprobs[row][ref.mask[row]].sum().item() == pytest.approx(
            out.outputs[0].cumulative_logprob, abs=1e-3
        )
    no_logprobs = engine_processed.generate(prompts[:1], vllm.SamplingParams(max_tokens=4), use_tqdm=False)
    with pytest.raises(ValueError, match="logprobs=0"):
        lpv.rollout_batch(no_logprobs)


def _perturbed(model: Any, seed: int, scale: float = 0.5) -> list[tuple[str, torch.Tensor]]:
    """Change the trainer's weights in place (a big 'optimizer step') and return them, checkpoint names."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, param in model.named_parameters():
            if param.ndim == 2:
                param.add_(torch.randn(param.shape, generator=gen) * param.std() * scale)
    return [(name, p.detach().clone()) for name, p in model.state_dict().items()]


@pytest.fixture(scope="module")
def engine_latest(model_dir: Path, engine_processed: Any, engine_raw: Any) -> Any:
    """engine_processed's twin, started after the others: get_metrics() reads vLLM's process-wide
    Prometheus registry, which follows the engine started last. Module-scoped because tearing an
    in-process engine down also tears down the distributed state the other engines share."""
    return _engine(
        model_dir,
        logprobs_mode="processed_logprobs",
        enable_prefix_caching=True,
        hf_overrides={"head_dtype": "float32"},
    )


def test_same_settings_give_the_same_fingerprint(engine_latest: Any, engine_processed: Any) -> None:
    assert (
        lpv.engine_config(engine_latest)["fingerprint"] == lpv.engine_config(engine_processed)["fingerprint"]
    )


def test_weight_update_without_prefix_cache_reset_is_caught(
    tmp_path: Path, model_dir: Path, engine_latest: Any
) -> None:
    from transformers import AutoModelForCausalLM

    llm = engine_latest

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    gen = torch.Generator().manual_seed(3)
    prefix = torch.randint(
        3, model.config.vocab_size, (200,), generator=gen
    ).tolist()  # > one 128-token block
    prompts = [{"prompt_token_ids": [*prefix, 10 + i, 20 + i]} for i in range(6)]
    gaps: dict[str, float] = {}
    with collectors.init(run_id="inflight", root=tmp_path) as run:
        watcher = lpv.watch(run, llm)
        try:
            llm.generate(prompts, _sampling(), use_tqdm=False)  # fills the prefix cache, old weights
            for step, reset in ((1, False), (2, True)):
                watcher.step, watcher.weight_version = step, step
                llm.collective_rpc(
                    "reload_weights",
                    kwargs={"weights_iterator": _perturbed(model, seed=step), "is_checkpoint_format": True},
                )
                if reset:
                    llm.reset_prefix_cache()
                outputs = llm.generate(prompts, _sampling(), use_tqdm=False)
                batch = lpv.log_rollout(run, step, outputs, watcher=watcher)
                stats = run.log_mismatch(step, _recompute(model, outputs, batch), batch.logprobs, batch.mask)
                gaps["reset" if reset else "no_reset"] = stats["mismatch/abs_logp_diff_mean"]
                if not reset:
                    assert min(batch.num_cached_tokens) >= 128, batch.num_cached_tokens
        finally:
            watcher.close()
    assert gaps["no_reset"] > 0.05, gaps
    assert gaps["reset"] < 0.01, gaps
    assert gaps["no_reset"] > 5 * gaps["reset"], gaps

    store = Store(tmp_path)
    payloads = storage.events(store, ["inflight"], ["weight_update"]).column("payload").to_pylist()
    updates = [json.loads(p) for p in payloads]
    assert [(u["weight_version"], u["prefix_cache_reset"], u["resolved_by"]) for u in updates] == [
        (1, False, "generate"),
        (2, True, "reset_prefix_cache"),
    ]
    for u in updates:
        assert u["method"] == "reload_weights" and u["tensors"] > 0 and u["prefix_caching"] is True
        assert u["paused_generation"] is True and u["duration_s"] >= 0 and len(u["checksum"]) == 16
    assert updates[0]["checksum"] != updates[1]["checksum"]
    stale = store.sql("SELECT step, payload FROM events WHERE kind = 'stale_prefix_cache'").to_pylist()
    assert len(stale) == 1 and "no prefix-cache reset" in json.loads(stale[0]["payload"])["message"]
    hit_rows = store.sql(
        "SELECT step, value FROM metrics WHERE name = 'rollout/prefix_cache_hit_tokens'"
    ).to_pylist()
    hits = {r["step"]: r["value"] for r in hit_rows}
    # No reset: all six prompts hit the stale cached prefix. After the reset the first one recomputes
    # it with the new weights (the others then share that fresh block within the batch).
    assert hits[1] >= 6 * 128 and hits[2] <= 5 * 128
    engine_hits = (
        store.sql("SELECT step, value FROM metrics WHERE name = 'engine/prefix_cache_hits' ORDER BY step")
        .column("value")
        .to_pylist()
    )
    assert engine_hits and engine_hits[0] > 0


def test_direct_worker_reload_is_one_event_and_a_new_checksum(
    tmp_path: Path, engine_processed: Any, model_dir: Path
) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    worker = engine_processed.llm_engine.model_executor.driver_worker
    with collectors.init(run_id="direct", root=tmp_path) as run:
        watcher = lpv.watch(run, engine_processed)
        try:
            before = engine_processed.collective_rpc("logprobe_checksum")[0]
            worker.reload_weights(weights_iterator=_perturbed(model, seed=11), is_checkpoint_format=True)
            after = engine_processed.collective_rpc("logprobe_checksum")[0]
            engine_processed.update_weight_version("step-11")  # vLLM's own provenance (>= 0.27)
            engine_processed.reset_prefix_cache()
            outputs = engine_processed.generate(_prompts(2), _sampling(), use_tqdm=False)
            batch = lpv.log_rollout(run, 11, outputs, watcher=watcher)
        finally:
            watcher.close()
    lengths = batch.lengths.tolist()
    assert batch.weight_versions == [[("step-11", 0, n)] for n in lengths]
    assert batch.metrics()["rollout/weight_versions"] == 1.0
    assert "reload_weights" not in vars(worker)  # the watcher unwrapped the engine again
    events = Store(tmp_path).sql("SELECT kind, payload FROM events WHERE kind LIKE '%update%'").to_pylist()
    assert len(events) == 1, events
    payload = json.loads(events[0]["payload"])
    assert payload["method"] == "reload_weights" and payload["prefix_cache_reset"] is True
    assert payload["weight_version"] == "step-11"  # read from the engine when the user set none
    assert before != after and payload["checksum"] == after


def test_model_load_weights_colocate_path(tmp_path: Path, engine_processed: Any, trainer: Any) -> None:
    """TRL's colocate weight sync. Runs on GPU; on CPU vLLM itself refuses it, and the test says so."""
    model = engine_processed.llm_engine.model_executor.driver_worker.worker.model_runner.get_model()
    on_cpu = engine_processed.llm_engine.vllm_config.device_config.device_type == "cpu"
    with collectors.init(run_id="colocate", root=tmp_path) as run:
        watcher = lpv.watch(run, engine_processed)
        try:
            state = [(n, p.detach().clone()) for n, p in trainer.state_dict().items()]  # HF names
            try:
                model.load_weights(weights=state)
            except AttributeError as exc:
                if on_cpu and "weight_loader" in str(exc):
                    pytest.skip(
                        "model.load_weights needs a GPU: vLLM's CPU backend prepacks linear "
                        f"weights, which then have no weight_loader ({exc})"
                    )
                raise
            engine_processed.reset_prefix_cache()
        finally:
            watcher.close()
    payloads = Store(tmp_path).sql("SELECT payload FROM events WHERE kind = 'weight_update'").column(0)
    assert [json.loads(p)["method"] for p in payloads.to_pylist()] == ["load_weights"]


def test_the_module_stays_within_its_time_budget() -> None:
    assert STARTED, "runs last, after the engine tests"
    assert time.time() - STARTED[0] < 180
