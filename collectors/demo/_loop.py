"""The demo's GRPO loop: real optimizer steps, weights pushed to the rollout engine every step.

Group-relative advantages, a PPO-clipped objective against the engine's reported logprobs (which
is exactly where a mismatch hurts), a frozen reference model for KL, and every number logged
through the project's own collectors.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from logprobe import collectors
from logprobe.collectors.demo._engines import (
    EngineSettings,
    RemoteVllmEngine,
    RolloutEngine,
    TorchSampler,
    VllmEngine,
)
from logprobe.collectors.demo._task import RESPONSE_TOKENS, TARGETS, Task, build_task
from logprobe.collectors.replay import engine_python

PROMPTS_PER_STEP = 16
GROUP_SIZE = 4
LEARNING_RATE = 5e-3
CLIP_EPS = 0.2
DEFAULT_STEPS = 24
CHECKPOINT_EVERY = 4  # policy versions saved for ``logprobe replay`` (a few MB per run on the tiny model)
SAMPLED_SEQUENCES = 16  # whole sequences per step kept in the ``sequences`` table: what replay re-scores
PROJECT = "logprobe-demo"
# The supervised pass before RL (``warm_start``): about 10 s on 2 cores, once per seed and process.
WARM_START_STEPS = 200
WARM_START_LR = 3e-3

_REFERENCE = EngineSettings()
_CACHED = EngineSettings(prefix_caching=True, reset_prefix_cache_on_update=True)


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    engine: EngineSettings
    switch_to: EngineSettings | None = None  # restart the engine with these halfway through
    # Faults in the trainer's plumbing rather than the engine's settings:
    miss_every_other_update: bool = False  # a weight push that never reaches the engine
    policy_lag: int = 0  # rollouts come from the policy this many versions back (async RL)
    trainer_offset: int = 0  # the trainer's logprobs are misaligned with the rollout's by this many tokens
    # What a diagnosis should name (a ``monitor.CAUSES`` id; None for a healthy run) and from which
    # step the fault shows (-1: half-way, where ``switch_to`` lands).
    cause: str | None = None
    onset: int = 0
    # The seed's investigation: the vLLM release this run's engine is (its own virtualenv, see
    # ``collectors.replay.engine_python``); None for the demo's in-process engines.
    release: str | None = None


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in [
        Scenario(
            "reference",
            "processed logprobs, no prefix caching, updates between batches, fp32 lm_head",
            _REFERENCE,
        ),
        Scenario(
            "raw-logprobs",
            "the engine reports raw logprobs while sampling at temperature 0.7",
            replace(_REFERENCE, logprobs_mode="raw_logprobs"),
            cause="logprobs_semantics",
            onset=0,
        ),
        Scenario(
            "prefix-cache-no-reset",
            "prefix caching on, never reset after a weight update",
            replace(_CACHED, reset_prefix_cache_on_update=False),
            cause="stale_prefix_cache",
            onset=1,
        ),
        Scenario(
            "inflight-update",
            "weights change mid-batch without pausing: responses mix two policies",
            replace(_REFERENCE, pause_generation_for_updates=False),
            cause="inflight_weight_update",
            onset=1,
        ),
        Scenario(
            "bf16-lm-head",
            "the engine computes the final projection in bf16, the trainer in fp32",
            replace(_REFERENCE, lm_head_dtype="bfloat16"),
            cause="lm_head_precision",
            onset=0,
        ),
        Scenario(
            "all-fixed",
            "prefix caching with every fix: reset after updates, paused generation, "
            "processed logprobs, fp32 lm_head",
            _CACHED,
        ),
        Scenario(
            "top-p-truncation",
            "the engine samples with top_p = 0.8 and reports processed logprobs renormalised over the "
            "nucleus; the trainer scores over the full vocabulary",
            replace(_REFERENCE, top_p=0.8),
            cause="sampling_truncation",
            onset=0,
        ),
        Scenario(
            "stale-weights",
            "every other weight update never reaches the engine",
            _REFERENCE,
            miss_every_other_update=True,
            cause="stale_weights",
            onset=1,
        ),
        Scenario(
            "policy-lag",
            "asynchronous rollouts: each batch comes from the policy two versions back",
            _REFERENCE,
            policy_lag=2,
            cause="policy_lag",
            onset=1,
        ),
        Scenario(
            "off-by-one",
            "the trainer's logprobs are shifted one position against the rollout's",
            _REFERENCE,
            trainer_offset=1,
            cause="token_misalignment",
            onset=0,
        ),
        Scenario(
            "flag-change",
            "starts as reference; halfway the engine restarts with raw logprobs",
            _REFERENCE,
            switch_to=replace(_REFERENCE, logprobs_mode="raw_logprobs"),
            cause="logprobs_semantics",
            onset=-1,
        ),
    ]
}

StepCallback = Callable[[str, int, int, float], None]


# The seed's migration, on its own engines: the same model, prompts and seeds through vLLM 0.8.5
# (V0), 0.18.1 (V1) with its defaults, and V1 with each of the fixes the seed's team found. The
# engines compute in float32 (0.8.5 refuses V1 for float32 on CPU anyway), so what differs is
# only the logprob semantics and the prefix cache. A V1 trainer written for V0 does not reset
# the prefix cache after a weight update: V0 had no prefix caching to reset.
_V1_DEFAULT = EngineSettings(
    logprobs_mode="raw_logprobs", prefix_caching=True, reset_prefix_cache_on_update=False
)
SEED_SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in [
        Scenario(
            "v0",
            "vLLM 0.8.5 (V0) with its defaults: the run before the migration",
            _REFERENCE,
            release="0.8.5",
        ),
        Scenario(
            "v1-default",
            "vLLM 0.18.1 (V1) with its defaults: raw logprobs, prefix caching on (never reset)",
            _V1_DEFAULT,
            cause="logprobs_semantics",
            release="0.18.1",
        ),
        Scenario(
            "v1-processed",
            "V1 with logprobs_mode=processed_logprobs; prefix caching still on, never reset",
            replace(_V1_DEFAULT, logprobs_mode="processed_logprobs"),
            cause="stale_prefix_cache",
            release="0.18.1",
        ),
        Scenario(
            "v1-no-prefix-cache",
            "V1 with enable_prefix_caching=False; raw logprobs still",
            replace(_V1_DEFAULT, prefix_caching=False),
            cause="logprobs_semantics",
            release="0.18.1",
        ),
        Scenario(
            "v1-fixed",
            "V1 with processed logprobs and a prefix-cache reset after every weight update",
            replace(_V1_DEFAULT, logprobs_mode="processed_logprobs", reset_prefix_cache_on_update=True),
            release="0.18.1",
        ),
    ]
}


def supported(scenario: Scenario, engine: str) -> bool:
    """Whether ``engine`` can play ``scenario``: the offline vLLM ``LLM`` generates a batch in one
    blocking call, so a weight update cannot land in the middle of one (that needs ``AsyncLLM``)."""
    settings = [scenario.engine] + ([scenario.switch_to] if scenario.switch_to else [])
    return engine != "vllm" or all(s.pause_generation_for_updates for s in settings)


def build_policy(vocab_size: int, seed: int) -> Any:
    """A freshly initialised tiny Llama: near uniform, its logits all within about 1 of zero."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=64,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=2,
    )
    return LlamaForCausalLM(config).float()


def warm_start(task: Task, seed: int) -> Any:
    """The policy RL starts from: ``build_policy`` after a brief supervised pass on the answer's
    form (eight digits after ``=``, drawn uniformly: the sums are left for RL to learn).

    Real RL starts from an SFT model, not a uniform one, and it matters to what the demo can show:
    a fresh model's logits all sit near 0, where a bf16 ``lm_head`` rounds almost nothing (its
    |dlogp| at step 0 was 1.07x an fp32 head's on real vLLM), while after this pass the digits' logits
    stand several units apart and bf16 rounds them 2-8x further than the engine's own bf16 body does,
    as on a real model. Memoised per process: every scenario of a seed starts from the same weights.
    """
    key = (len(task.tokenizer), seed)
    if key not in _WARM_STARTS:
        policy = build_policy(len(task.tokenizer), seed)
        generator = torch.Generator().manual_seed(10_000 + seed)
        digits = torch.tensor(sorted(task.digit_value))
        optimizer = torch.optim.Adam(policy.parameters(), lr=WARM_START_LR)
        with torch.enable_grad():  # a caller's no_grad must not turn the pass into a no-op or an error
            for _ in range(WARM_START_STEPS):
                targets = torch.tensor(TARGETS)[
                    torch.randint(len(TARGETS), (PROMPTS_PER_STEP,), generator=generator)
                ]
                prompts = torch.tensor([task.prompt_ids(int(t)) for t in targets])
                answers = digits[
                    torch.randint(len(digits), (PROMPTS_PER_STEP, RESPONSE_TOKENS), generator=generator)
                ]
                logits = policy(torch.cat([prompts, answers], 1)[:, :-1]).logits[:, prompts.shape[1] - 1 :]
                loss = torch.nn.functional.cross_entropy(
                    logits.reshape(-1, logits.shape[-1]), answers.reshape(-1)
                )
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        _WARM_STARTS[key] = _snapshot(policy)
    policy = build_policy(*key)
    policy.load_state_dict(_WARM_STARTS[key])
    return policy


_WARM_STARTS: dict[tuple[int, int], dict[str, torch.Tensor]] = {}


def run_scenario(
    scenario: Scenario,
    *,
    root: str | Path | None,
    workdir: Path,
    engine_kind: str = "torch",
    steps: int = DEFAULT_STEPS,
    seed: int = 0,
    on_step: StepCallback | None = None,
) -> str:
    """Train one scenario from the same seed; return its run id."""
    task = build_task(workdir)
    policy = warm_start(task, seed)
    reference = copy.deepcopy(policy).eval()
    optimizer = torch.optim.Adam(policy.parameters(), lr=LEARNING_RATE)
    model_dir = workdir / f"model-{scenario.name}"
    if scenario.release is not None:
        engine_kind = "vllm"
    if engine_kind == "vllm":
        policy.save_pretrained(model_dir)
        task.tokenizer.save_pretrained(model_dir)
    generator = torch.Generator().manual_seed(seed)
    config = {
        "scenario": scenario.name,
        "description": scenario.description,
        "engine": engine_kind,
        "steps": steps,
        "seed": seed,
        "lr": LEARNING_RATE,
        "warm_start_steps": WARM_START_STEPS,
        "prompts_per_step": PROMPTS_PER_STEP,
        "group_size": GROUP_SIZE,
        "clip_eps": CLIP_EPS,
        "engine_settings": asdict(scenario.engine),
        "switch_to": asdict(scenario.switch_to) if scenario.switch_to else None,
        "release": scenario.release,
    }
    if scenario.release is None:
        run_id, tags = f"demo-{engine_kind}-{scenario.name}", ["demo", engine_kind, scenario.name]
        # Every scenario is judged against the healthy run of its engine (trained first).
        reference_run = None if scenario.name == "reference" else f"demo-{engine_kind}-reference"
    else:  # the seed's runs are judged against the run before the migration
        run_id, tags = f"seed-{scenario.name}", ["seed", f"vllm-{scenario.release}", scenario.name]
        reference_run = None if scenario.name == "v0" else "seed-v0"
    run = collectors.init(
        run_id=run_id,
        root=root,
        name=scenario.name,
        project=PROJECT,
        config=config,
        tags=tags,
        alerts=True,  # the shipped rules and the detectors, inline: alerts and findings as they happen
        reference=reference_run,
    )
    make = functools.partial(_make_engine, engine_kind, release=scenario.release, workdir=workdir)
    engines = [make(scenario.engine, policy, model_dir, seed, run)]
    engine = engines[0]
    history = {0: _snapshot(policy)} if scenario.policy_lag else {}  # recent weights by policy version
    believed = 0  # the version the trainer thinks the engine serves
    try:
        engine.record(run, 0)
        settings = scenario.engine
        run.event("sampling_params", step=0, temperature=settings.temperature, top_p=settings.top_p, top_k=-1)
        for step in range(steps):
            if scenario.switch_to is not None and step == steps // 2:
                # A restart with other flags, the way a version bump lands mid-run. The old engine is
                # kept alive: in-process vLLM engines share state that a shutdown would tear down.
                engine = make(scenario.switch_to, policy, model_dir, seed, run)
                engines.append(engine)
                engine.push_weights(policy.state_dict(), version=step)
                engine.record(run, step)
                run.event(
                    "config_change",
                    step=step,
                    reason="engine restarted with new flags",
                    before=asdict(scenario.engine),
                    after=asdict(scenario.switch_to),
                )
            engine.set_step(step)
            if step % CHECKPOINT_EVERY == 0:
                _checkpoint(run, policy, task, step)
            reward = _train_step(
                run, step, task, policy, reference, optimizer, engine, generator, scenario, believed
            )
            believed = _push(scenario, engine, policy, history, step + 1)
            for kind, payload in engine.drain_events():
                run.event(kind, step=step, **payload)
            if on_step is not None:
                on_step(scenario.name, step, steps, reward)
    finally:
        for each in engines:
            each.close()
        run.close()
    return run.run_id


def _make_engine(
    kind: str,
    settings: EngineSettings,
    policy: Any,
    model_dir: Path,
    seed: int,
    run: collectors.Run,
    *,
    release: str | None = None,
    workdir: Path | None = None,
) -> RolloutEngine:
    if release is not None:
        return RemoteVllmEngine(
            engine_python(f"vllm=={release}"), model_dir, settings, run, workdir or model_dir, seed
        )
    if kind == "torch":
        return TorchSampler(policy, settings)
    if kind == "vllm":
        engine = VllmEngine(model_dir, settings, seed=seed)
        engine.attach(run)
        return engine
    raise ValueError(f"unknown engine {kind!r}; choose torch or vllm")


def _train_step(
    run: collectors.Run,
    step: int,
    task: Task,
    policy: Any,
    reference: Any,
    optimizer: torch.optim.Optimizer,
    engine: RolloutEngine,
    generator: torch.Generator,
    scenario: Scenario,
    believed: int,
) -> float:
    """One GRPO step; ``believed`` is the policy version the trainer thinks the engine serves (what
    a trainer records per rollout), beside which the engine's own version is logged."""
    targets = torch.tensor(TARGETS)[torch.randint(len(TARGETS), (PROMPTS_PER_STEP,), generator=generator)]
    prompts = [task.prompt_ids(int(t)) for t in targets]
    rollout = engine.generate(prompts, n=GROUP_SIZE, max_tokens=RESPONSE_TOKENS)
    responses = rollout.tokens
    rewards = task.rewards(targets.repeat_interleave(GROUP_SIZE), responses)
    grouped = rewards.view(PROMPTS_PER_STEP, GROUP_SIZE)
    advantages = ((grouped - grouped.mean(1, keepdim=True)) / (grouped.std(1, keepdim=True) + 1e-6)).view(-1)

    prompt_len = len(prompts[0])
    full = torch.cat([torch.tensor(prompts).repeat_interleave(GROUP_SIZE, 0), responses], dim=1)
    temperature = engine.settings.temperature
    logits = policy(full[:, :-1]).logits[:, prompt_len - 1 :].float() / temperature
    trainer_lp = torch.log_softmax(logits, -1).gather(2, responses[..., None]).squeeze(-1)
    with torch.no_grad():
        ref_logits = reference(full[:, :-1]).logits[:, prompt_len - 1 :].float() / temperature
        ref_lp = torch.log_softmax(ref_logits, -1).gather(2, responses[..., None]).squeeze(-1)
    rollout_lp, trainer_ids, rollout_ids = rollout.logprobs, responses, responses
    if scenario.trainer_offset:  # the plumbing bug: trainer position i is paired with rollout i + k
        k = scenario.trainer_offset
        trainer_lp, trainer_ids = trainer_lp[:, k:], responses[:, k:]
        ref_lp, logits = ref_lp[:, k:], logits[:, k:]
        rollout_lp, rollout_ids = rollout_lp[:, :-k], responses[:, :-k]
    ratio = torch.exp(trainer_lp - rollout_lp.float())
    adv = advantages[:, None].float()
    loss = -torch.minimum(ratio * adv, ratio.clamp(1 - CLIP_EPS, 1 + CLIP_EPS) * adv).mean()
    optimizer.zero_grad()
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
    optimizer.step()

    group_prompts = [p for p in prompts for _ in range(GROUP_SIZE)]
    run.log_mismatch(
        step,
        trainer_lp.detach(),
        rollout_lp,
        token_ids=trainer_ids,
        rollout_token_ids=rollout_ids,
        tokenizer=task.tokenizer,
        policy_version=step,
        rollout_versions=[believed] * len(group_prompts),
        weight_versions=[engine.version] * len(group_prompts),
        prompt_ids=group_prompts,
        samples=SAMPLED_SEQUENCES,
    )
    stats = collectors.rl_stats(
        logprobs=trainer_lp.detach(),
        old_logprobs=rollout_lp,
        advantages=advantages,
        ref_logprobs=ref_lp,
        logits=logits.detach(),
        rewards=rewards,
        clip_eps=CLIP_EPS,
    )
    run.log(
        step,
        {
            **stats,
            "train/loss": loss.item(),
            "train/grad_norm": float(grad_norm),
            "rollout/prefix_cache_hit_tokens": float(rollout.cached_tokens),
        },
        policy_version=step,
    )
    return float(rewards.mean())


def _checkpoint(run: collectors.Run, policy: Any, task: Task, version: int) -> None:
    """Save policy ``version`` (weights, config, tokenizer: a folder vLLM and transformers both load)
    under the store root and record it as a ``checkpoint`` event, so ``logprobe replay`` finds the
    weights behind a logged rollout with no other argument. The path is relative to the root; an
    object-store root gets none (checkpoints are folders on a filesystem)."""
    root = run.writer.root
    if not isinstance(root, Path):
        return
    relative = Path("checkpoints") / run.run_id / f"policy-v{version}"
    policy.save_pretrained(root / relative)
    task.tokenizer.save_pretrained(root / relative)
    run.event("checkpoint", step=version, path=str(relative), policy_version=version)


def _snapshot(policy: Any) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in policy.state_dict().items()}


def _push(
    scenario: Scenario, engine: RolloutEngine, policy: Any, history: dict[int, Any], version: int
) -> int:
    """Send the trainer's new weights (``version``) to the engine, or what a faulty pipeline sends:
    nothing on every other update, or the weights of ``policy_lag`` versions back. Returns the
    version the trainer believes the engine now serves."""
    if scenario.miss_every_other_update and version % 2 == 1:
        return version  # lost on the way: the engine keeps serving the previous weights, unknowingly
    if scenario.policy_lag:
        history[version] = _snapshot(policy)
        old = max(0, version - scenario.policy_lag)
        engine.push_weights(history[old], version=old)
        for stale in [v for v in history if v < old]:
            del history[stale]
        return old  # asynchronous by design: the trainer knows the rollouts lag
    engine.push_weights(policy.state_dict(), version=version)
    return version
