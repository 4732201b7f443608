"""What a replay needs from the store: the engine settings behind a step, its sequences and
checkpoints, and the candidate changes to try.

Pure Python over DuckDB results (no torch, no vLLM), so the plan is testable without an engine.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from logprobe import storage


class ReplayError(ValueError):
    """The run cannot be replayed as asked; the message names what is missing and how to supply it."""


@dataclass(frozen=True)
class Settings:
    """The engine as it served a step, plus what the trainer did around it."""

    dtype: str = "auto"
    head_dtype: str | None = None  # the lm_head/logits dtype; None: the model dtype
    logprobs_mode: str = "raw_logprobs"
    enable_prefix_caching: bool = False
    reset_prefix_cache: bool = True  # after each weight update (a trainer's call, not an engine flag)
    enforce_eager: bool = True
    enable_chunked_prefill: bool | None = None
    async_scheduling: bool | None = None
    seed: int = 0
    max_model_len: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    batch: str = "together"  # "single": one sequence per engine call (the batch-composition floor)

    def engine(self) -> dict[str, Any]:
        """The ``start`` settings of the worker protocol."""
        keys = ("dtype", "head_dtype", "logprobs_mode", "enable_prefix_caching", "enforce_eager")
        keys += ("enable_chunked_prefill", "async_scheduling", "seed", "max_model_len")
        return {k: getattr(self, k) for k in keys if getattr(self, k) is not None}

    def sampling(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k}

    def apply(self, changes: dict[str, Any]) -> Settings:
        return replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Sequence:
    step: int
    seq_index: int
    reason: str
    rollout_version: int | None
    prompt_ids: list[int]
    token_ids: list[int]
    rollout_logprobs: list[float]  # what the run logged, for the record
    trainer_logprobs: list[float]


@dataclass(frozen=True)
class StepPlan:
    step: int
    version: int | None  # the policy version the rollouts came from
    checkpoint: Path  # its weights
    # The weights the prefix cache may still hold KV from: the first checkpoint since the engine
    # (re)started, for with no reset an updated engine keeps serving a hot shared prefix computed
    # then (the same checkpoint when there is no earlier one).
    prime: Path
    settings: Settings
    sequences: list[Sequence]


@dataclass(frozen=True)
class Plan:
    run: str
    engine: str | None  # what produced the rollouts ("vllm-cpu", "torch-sampler", ...)
    steps: list[StepPlan]
    reference: str | None = None  # the run whose level is the target
    notes: list[str] = field(default_factory=list)


# Candidate changes: name -> (what it tries, a function from the recorded settings to the change,
# or None where it does not apply).
def _flip_mode(s: Settings) -> dict[str, Any] | None:
    other = {"raw_logprobs": "processed_logprobs", "processed_logprobs": "raw_logprobs"}
    return {"logprobs_mode": other[s.logprobs_mode]} if s.logprobs_mode in other else None


def _flip_reset(s: Settings) -> dict[str, Any] | None:
    return {"reset_prefix_cache": not s.reset_prefix_cache} if s.enable_prefix_caching else None


def _flip_head(s: Settings) -> dict[str, Any] | None:
    head = s.head_dtype or s.dtype
    if head != "float32":
        return {"head_dtype": "float32"}
    return {"head_dtype": s.dtype} if s.dtype not in ("float32", "auto") else {"head_dtype": "bfloat16"}


def _trainer_sampling(s: Settings) -> dict[str, Any] | None:
    return {"top_p": 1.0, "top_k": -1} if s.top_p < 1.0 or s.top_k > 0 else None


CANDIDATES: dict[str, tuple[str, Callable[[Settings], dict[str, Any] | None]]] = {
    "logprobs_mode": ("raw against processed logprobs", _flip_mode),
    "prefix_cache_reset": ("a prefix-cache reset after the weight update, or none", _flip_reset),
    "head_dtype": ("the lm_head/logits dtype", _flip_head),
    "sampling": ("the sampling parameters the trainer assumes (full vocabulary)", _trainer_sampling),
    "batch": ("one sequence per engine call instead of the whole batch", lambda s: {"batch": "single"}),
    "prefix_caching": (
        "prefix caching on or off",
        lambda s: {"enable_prefix_caching": not s.enable_prefix_caching},
    ),
    "enforce_eager": ("eager mode against compiled graphs", lambda s: {"enforce_eager": not s.enforce_eager}),
    "chunked_prefill": (
        "chunked prefill on or off",
        lambda s: {"enable_chunked_prefill": not bool(s.enable_chunked_prefill)},
    ),
    "async_scheduling": (
        "async scheduling on or off",
        lambda s: {"async_scheduling": not bool(s.async_scheduling)},
    ),
}
DEFAULT_VARY = ("logprobs_mode", "prefix_cache_reset", "head_dtype", "sampling", "batch")
DEFAULT_VARIANTS = 5  # with fewer applicable defaults, ``prefix_caching`` fills in


def candidate_changes(settings: Settings, vary: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """The changes to try, by candidate name: those asked for, else the applicable defaults."""
    if vary:
        unknown = [v for v in vary if v not in CANDIDATES]
        if unknown:
            raise ReplayError(f"unknown --vary {', '.join(unknown)}; choose from {', '.join(CANDIDATES)}")
        names = list(dict.fromkeys(vary))
    else:
        names = list(DEFAULT_VARY)
    out = {n: c for n in names if (c := CANDIDATES[n][1](settings)) is not None}
    if not vary and len(out) < DEFAULT_VARIANTS:
        out["prefix_caching"] = CANDIDATES["prefix_caching"][1](settings) or {}
    return out


def parity_settings(settings: Settings) -> Settings:
    """The engine set up to report what the trainer computes, one sequence at a time: the noise
    floor when no reference run is at hand."""
    return settings.apply(
        {
            "logprobs_mode": "processed_logprobs",
            "head_dtype": "float32",
            "enable_prefix_caching": False,
            "reset_prefix_cache": True,
            "top_p": 1.0,
            "top_k": -1,
            "batch": "single",
        }
    )


def plan_replay(
    store: storage.Store,
    run: str,
    *,
    model: str | Path | None = None,
    steps: list[int] | None = None,
) -> Plan:
    """Everything a replay of ``run`` needs, read from the store; a ``ReplayError`` says what is
    missing (no sequences, no checkpoint for a step, an engine that cannot be replayed)."""
    meta = storage.run_record(store, run)
    if meta is None:
        raise ReplayError(f"no run {run!r} in {store.root}")
    logged = _sequences(store, run, steps)
    if not logged:
        what = f"at step(s) {', '.join(map(str, steps))}" if steps else "at any step"
        raise ReplayError(
            f"run {run!r} logged no sequences {what}: replay re-scores the whole sequences that "
            "log_mismatch(..., prompt_ids=...) keeps in the sequences table"
        )
    checkpoints = _checkpoints(store, run)
    engines = storage.engines(store, [run]).to_pylist()  # in the order they took effect
    if not engines:
        raise ReplayError(f"run {run!r} recorded no engine settings (log_engine / record_engine)")
    events = sorted(
        storage.events(store, [run], kinds=["sampling_params", "weight_update"]).to_pylist(),
        key=lambda e: -1 if e["step"] is None else e["step"],  # by step; within one, as recorded
    )
    notes: list[str] = []
    by_step: dict[int, list[Sequence]] = {}
    for seq in logged:
        by_step.setdefault(seq.step, []).append(seq)
    plans = []
    for step in sorted(by_step):
        seqs = by_step[step]
        version = seqs[0].rollout_version
        if model is not None:
            ckpt = prime = Path(model)
        else:
            if version not in checkpoints:
                if steps:
                    have = ", ".join(f"v{v}" for v in sorted(checkpoints)) or "none"
                    raise ReplayError(
                        f"step {step} of {run!r} was sampled by policy version {version}, which has no "
                        f"checkpoint (recorded: {have}); pass --model DIR or record checkpoint events"
                    )
                continue
            ckpt = checkpoints[version]
            started = _engine_start_version(store, run, engines, step)
            earlier = [v for v in checkpoints if v < version and (started is None or v >= started)]
            prime = checkpoints[min(earlier)] if earlier else ckpt
        plans.append(StepPlan(step, version, ckpt, prime, _settings_at(engines, events, step, version), seqs))
    if not plans:
        have = ", ".join(f"v{v}" for v in sorted(checkpoints)) or "none"
        raise ReplayError(
            f"no logged step of {run!r} has the weights that sampled it (checkpoints recorded: {have}); "
            "pass --model DIR, or log `checkpoint` events with path and policy_version"
        )
    if not steps:
        plans = plans[-1:]  # the latest replayable step
    if model is not None:
        notes.append("one model folder for every step: the batch before the update ran on the same weights")
    elif any(p.prime == p.checkpoint for p in plans):
        notes.append("no earlier checkpoint: the batch before the update ran on the same weights")
    return Plan(run, engines[-1]["engine"], plans, meta["reference_run"], notes)


def _engine_start_version(
    store: storage.Store, run: str, engines: list[dict[str, Any]], step: int
) -> int | None:
    """The policy version the engine in force at ``step`` started on (its first rollouts')."""
    row = next((e for e in reversed(engines) if (e["step_first"] or 0) <= step), engines[0])
    return storage.first_rollout_version(store, run, row["step_first"] or 0)


def _sequences(store: storage.Store, run: str, steps: list[int] | None) -> list[Sequence]:
    rows = storage.replayable_sequences(store, run)
    wanted = set(steps) if steps else None
    out = []
    for r in rows:
        if wanted is not None and r["step"] not in wanted:
            continue
        tokens = [int(t) for t in r["token_ids"]]
        if not tokens or not r["prompt_ids"]:
            continue
        out.append(
            Sequence(
                r["step"],
                r["seq_index"],
                r["reason"],
                r["rollout_version"],
                [int(t) for t in r["prompt_ids"]],
                tokens,
                list(r["rollout_logprobs"] or []),
                list(r["trainer_logprobs"] or []),
            )
        )
    return out


def _checkpoints(store: storage.Store, run: str) -> dict[int, Path]:
    rows = sorted(
        storage.events(store, [run], kinds=["checkpoint"]).to_pylist(),
        key=lambda e: -1 if e["step"] is None else e["step"],
    )
    out: dict[int, Path] = {}
    for r in rows:
        payload = json.loads(r["payload"] or "{}")
        path, version = payload.get("path"), payload.get("policy_version")
        if not isinstance(path, str) or not isinstance(version, int):
            continue
        folder = Path(path)
        if not folder.is_absolute() and isinstance(store.root, Path):
            folder = store.root / folder
        if folder.is_dir():
            out[version] = folder
    return out


def _after(weight_version: Any, version: int | None) -> bool:
    return isinstance(weight_version, int) and version is not None and weight_version > version


def _settings_at(
    engines: list[dict[str, Any]], events: list[dict[str, Any]], step: int, version: int | None = None
) -> Settings:
    """The engine settings in force at ``step``: the latest engine record at or before it, the
    latest sampling parameters, and whether weight updates were followed by a cache reset.

    Only updates that reached the sampling policy count: a trainer step publishes the next version
    after its rollouts, under the same step number, so an update whose ``weight_version`` is past
    the rollouts' ``version`` says nothing about them. An update whose reset is still unknown (one
    resolved at close, before any generate) carries no evidence either way."""
    row = next((e for e in reversed(engines) if (e["step_first"] or 0) <= step), engines[0])
    flags = json.loads(row["flags"] or "{}")
    # Sub-configs that were not dataclasses in the recording release (0.8.5's ModelConfig) are
    # stored as their repr: nothing to read from them.
    model_cfg = flags.get("model_config") if isinstance(flags.get("model_config"), dict) else {}
    scheduler = flags.get("scheduler_config") if isinstance(flags.get("scheduler_config"), dict) else {}
    sampling: dict[str, Any] = {k: flags[k] for k in ("temperature", "top_p", "top_k") if k in flags}
    reset = flags.get("reset_prefix_cache_on_update")
    for e in events:
        if e["step"] is not None and e["step"] > step:
            break
        payload = json.loads(e["payload"] or "{}")
        if e["kind"] == "sampling_params":
            sampling.update({k: payload[k] for k in ("temperature", "top_p", "top_k") if k in payload})
        elif (
            e["kind"] == "weight_update"
            and payload.get("prefix_caching")
            and payload.get("prefix_cache_reset") is not None
            and not _after(payload.get("weight_version"), version)
        ):
            reset = bool(payload["prefix_cache_reset"])
    return Settings(
        dtype=row["dtype"] or "auto",
        head_dtype=row["lm_head_dtype"],
        logprobs_mode=row["logprobs_mode"] or "raw_logprobs",
        enable_prefix_caching=bool(row["enable_prefix_caching"]),
        reset_prefix_cache=True if reset is None else bool(reset),
        enforce_eager=True if row["enforce_eager"] is None else bool(row["enforce_eager"]),
        enable_chunked_prefill=scheduler.get("enable_chunked_prefill"),
        async_scheduling=row["async_scheduling"],
        seed=int(row["seed"] or 0),
        max_model_len=model_cfg.get("max_model_len"),
        temperature=float(sampling.get("temperature", 1.0)),
        top_p=float(sampling.get("top_p", 1.0)),
        top_k=int(sampling.get("top_k", -1) or -1),
    )
