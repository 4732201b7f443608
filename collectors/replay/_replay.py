"""Replay: score a run's logged sequences again, under its recorded engine settings and with one
setting changed at a time, and name the smallest change that brings it to its reference's level.

A diagnosis is a hypothesis; a replay tests it. Every variant sees the same tokens, the same
weights and the same trainer forward pass, so the difference between two variants is the setting
that differs, measured on the engine itself rather than argued from signatures.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from logprobe import storage
from logprobe.collectors.replay._client import EngineWorker, WorkerError, engine_python
from logprobe.collectors.replay._plan import (
    CANDIDATES,
    Plan,
    ReplayError,
    Settings,
    StepPlan,
    candidate_changes,
    parity_settings,
    plan_replay,
)

# A variant is at the level to reach when its mean |d| is within a factor of it. Against the floor
# (this run's own tokens, scored by the same engine at parity settings) the comparison is paired
# and deterministic, so 1.1x is room for what bf16 kernels do differently with other settings;
# against a reference run's replay (other tokens) the level differs by chance as well: a healthy
# bf16 engine's level wanders by about a fifth between runs and steps, and 1.5x leaves room for
# that while staying below what each named cause adds.
FLOOR_TOLERANCE = 1.1
REFERENCE_TOLERANCE = 1.5
# ... plus this much: below 1e-6 nats of mean |d| two fp32 paths differ by rounding alone (an fp32
# engine against an fp32 trainer sits near 2e-7), so a ratio of two such levels means nothing.
SLACK = 1e-6
PAIRS_FROM = 3  # with no single change enough, pairs of the best this many are tried
PAIR_MIN_EFFECT = 0.05  # share of the excess a single must move, either way, to be paired

Progress = Callable[[dict[str, Any]], None]


@dataclass
class Variant:
    name: str  # "recorded", a candidate name, "a+b" for a set, "reference" or "floor"
    changes: dict[str, Any]
    settings: Settings
    applied: dict[str, Any] = field(default_factory=dict)  # what the engine resolved the settings to
    logprobs: dict[int, list[list[float]]] = field(default_factory=dict)  # step -> per sequence
    metrics: dict[str, float] = field(default_factory=dict)
    removed: float | None = None
    run_id: str | None = None
    error: str | None = None
    seconds: float = 0.0
    refused: list[str] = field(default_factory=list)  # asked-for settings the engine did not take

    @property
    def level(self) -> float:
        return self.metrics.get("mismatch/abs_logp_diff_mean", math.nan)

    def as_dict(self) -> dict[str, Any]:
        """The report's view of a variant: what was asked, applied and measured, not the logprobs."""
        shown = ("name", "changes", "metrics", "removed", "run_id", "applied", "refused", "error")
        return {**{name: getattr(self, name) for name in shown}, "seconds": round(self.seconds, 2)}


@dataclass
class Verdict:
    changes: dict[str, Any] | None  # {} nothing to change; None: nothing tried reaches the level
    level: float
    reference_level: float
    reference: str  # the run replayed for the level, or "floor"
    message: str

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class Report:
    run: str
    steps: list[int]
    worker: dict[str, Any]
    recorded: dict[str, float]  # the logged mismatch of the replayed sequences
    reproduced: float  # max |recorded-settings replay - logged rollout logprob|
    variants: list[Variant]
    targets: list[Variant]  # the floor, and the reference run's replay where there is one
    verdict: Verdict
    seconds: float
    notes: list[str]
    reference_worker: dict[str, Any] | None = None  # where the reference ran on another interpreter

    def as_dict(self) -> dict[str, Any]:
        return {
            "run": self.run,
            "steps": self.steps,
            "worker": self.worker,
            "reference_worker": self.reference_worker,
            "recorded": self.recorded,
            "reproduced": self.reproduced,
            "variants": [v.as_dict() for v in self.variants],
            "levels": {v.name: v.as_dict() for v in self.targets},
            "verdict": self.verdict.as_dict(),
            "seconds": round(self.seconds, 1),
            "notes": self.notes,
        }


def replay(
    root: str | Path,
    run: str,
    *,
    model: str | Path | None = None,
    steps: list[int] | None = None,
    vary: list[str] | None = None,
    python: str | None = None,
    reference: str | None = None,
    reference_python: str | None = None,
    trainer_dtype: str = "float32",
    write: bool = True,
    on_progress: Progress | None = None,
) -> Report:
    """Replay ``run``; see the module docstring. ``python`` hosts the engine (default: this one);
    ``reference_python`` hosts the reference run's, where that ran on another release (the seed's
    V0 run against a V1 run: each replayed on its own engine, in one report). Either may be
    ``vllm==RELEASE`` for an engine ``make engines`` installed."""
    python = engine_python(python) if python else None
    reference_python = engine_python(reference_python) if reference_python else None
    started = time.perf_counter()
    progress = on_progress or (lambda event: None)
    with storage.Store(root) as store:
        plan = plan_replay(store, run, model=model, steps=steps)
        notes = list(plan.notes)
        ref_plan = _reference_plan(store, plan, reference, notes)
    recorded = plan.steps[0].settings
    differ = [s.step for s in plan.steps if s.settings != recorded]
    if differ:
        raise ReplayError(
            f"step {plan.steps[0].step} and step {differ[0]} of {run!r} ran under different engine "
            "settings (a restart with other flags in between); replay them one at a time"
        )
    changes = candidate_changes(recorded, vary)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    variants = [Variant("recorded", {}, recorded)]
    variants += [Variant(name, c, recorded.apply(c)) for name, c in changes.items()]
    parity = parity_settings(recorded)
    floors = [Variant("floor", {}, parity), Variant("floor_batched", {}, parity.apply({"batch": "together"}))]
    ref = Variant("reference", {}, ref_plan.steps[0].settings) if ref_plan is not None else None
    targets = floors + ([ref] if ref is not None else [])
    total = len(variants) + len(targets)
    progress({"phase": "trainer", "run": run, "variants": total})
    trainer = _trainer_scores(plan, trainer_dtype)
    ref_trainer = _trainer_scores(ref_plan, trainer_dtype)
    reference_worker = None
    with EngineWorker(python) as worker:
        for i, variant in enumerate([*variants, *targets]):
            progress({"phase": "variant", "name": variant.name, "index": i, "total": total})
            if variant is ref and ref_plan is not None:
                if reference_python:
                    with EngineWorker(reference_python) as other:
                        _score(other, ref_plan, variant)
                        reference_worker = other.info
                else:
                    _score(worker, ref_plan, variant)
            else:
                _score(worker, plan, variant)
        for v in [*variants, *floors]:
            _measure(v, plan, trainer)
        if ref is not None and ref_plan is not None:
            _measure(ref, ref_plan, ref_trainer)
        target = _target(floors, ref)
        base = variants[0]
        for v in variants[1:]:
            v.removed = _removed(base.level, v.level, target)
        pairs = plan_pairs(variants[1:], recorded, target) if base.level > target.bar else []
        for i, variant in enumerate(pairs):
            step = {"phase": "variant", "name": variant.name, "index": total + i, "total": total + len(pairs)}
            progress(step)
            _score(worker, plan, variant)
            _measure(variant, plan, trainer)
            variant.removed = _removed(base.level, variant.level, target)
        info = worker.info
    verdict = _verdict(base, [*variants[1:], *pairs], target)
    if write:
        for v in [*variants, *pairs]:
            if not v.error:
                v.run_id = _write(root, plan, v, trainer, stamp, info)
    progress({"phase": "done", "seconds": time.perf_counter() - started})
    return Report(
        run=run,
        steps=[s.step for s in plan.steps],
        worker=info,
        recorded=_logged_mismatch(plan),
        reproduced=_reproduced(plan, base),
        variants=[*variants, *pairs],
        targets=targets,
        verdict=verdict,
        seconds=time.perf_counter() - started,
        notes=notes,
        reference_worker=reference_worker,
    )


def _reference_plan(store: storage.Store, plan: Plan, reference: str | None, notes: list[str]) -> Plan | None:
    """The reference run's sequences at the same steps (else its latest replayable one), or None
    when it has none to replay: the floor is measured instead."""
    name = reference or plan.reference
    if name == "floor":
        notes.append("judged against the noise floor, as asked (--reference floor)")
        return None
    if not name or name == plan.run:
        notes.append(
            "no reference run: the level to reach is the noise floor (parity settings, this run's tokens)"
        )
        return None
    for steps in ([s.step for s in plan.steps], None):
        try:
            return plan_replay(store, name, steps=steps)
        except ReplayError as exc:
            reason = str(exc)
    notes.append(f"reference {name!r} cannot be replayed ({reason}); the level to reach is the noise floor")
    return None


def _score(worker: EngineWorker, plan: Plan, variant: Variant) -> None:
    """Start the engine with the variant's settings and, per step, replay the update sequence of
    training: the batch before on the previous weights (filling the prefix cache), the weight
    update, a cache reset if the variant resets, then the logged sequences with tokens forced."""
    began = time.perf_counter()
    s = variant.settings
    try:
        reply = worker.request("start", model=str(plan.steps[0].prime), settings=s.engine())
        variant.applied = {**reply["settings"], "path": reply.get("path", "decode")}
        variant.refused = [
            k for k, want in s.engine().items() if k in variant.applied and _differs(want, variant.applied[k])
        ]
        loaded = plan.steps[0].prime
        for step in plan.steps:
            if step.prime != loaded:
                worker.request("load", model=str(step.prime))
            worker.request("prime", prompts=_unique([q.prompt_ids for q in step.sequences]))
            worker.request("load", model=str(step.checkpoint))
            loaded = step.checkpoint
            if s.enable_prefix_caching and s.reset_prefix_cache:
                worker.request("reset_prefix_cache")
            reply = worker.request(
                "score",
                sequences=[{"prompt_ids": q.prompt_ids, "token_ids": q.token_ids} for q in step.sequences],
                sampling=s.sampling(),
                batch=s.batch,
            )
            variant.logprobs[step.step] = reply["logprobs"]
    except WorkerError as exc:
        variant.error = str(exc)
    finally:
        with contextlib.suppress(WorkerError):
            worker.request("stop")
        variant.seconds = time.perf_counter() - began


def _differs(want: Any, got: Any) -> bool:
    if want is None or got is None:
        return False
    if isinstance(want, bool) or isinstance(got, bool):
        return bool(want) != bool(got)
    return str(want) != str(got)


def _unique(prompts: list[list[int]]) -> list[list[int]]:
    return [list(p) for p in dict.fromkeys(tuple(p) for p in prompts)]


def _trainer_scores(plan: Plan | None, dtype: str) -> dict[int, list[list[float]]]:
    """The trainer's logprobs of each logged token: a transformers forward pass over prompt +
    response at the logged temperature (the one a trainer divides its logits by)."""
    if plan is None:
        return {}
    import torch
    from transformers import AutoModelForCausalLM

    out: dict[int, list[list[float]]] = {}
    models: dict[Path, Any] = {}
    for step in plan.steps:
        if step.checkpoint not in models:
            models.clear()
            models[step.checkpoint] = AutoModelForCausalLM.from_pretrained(
                step.checkpoint, dtype=getattr(torch, dtype)
            ).eval()
        model = models[step.checkpoint]
        temperature = step.settings.temperature or 1.0
        scores = []
        with torch.no_grad():
            for q in step.sequences:
                ids = torch.tensor([q.prompt_ids + q.token_ids])
                logits = model(ids).logits[0, len(q.prompt_ids) - 1 : -1].float() / temperature
                lp = torch.log_softmax(logits, -1).gather(1, torch.tensor(q.token_ids)[:, None])[:, 0]
                scores.append([float(x) for x in lp])
        out[step.step] = scores
    return out


def _measure(variant: Variant, plan: Plan, trainer: dict[int, list[list[float]]]) -> None:
    if variant.error or not variant.logprobs:
        return
    engine, train = [], []
    for step in plan.steps:
        engine += variant.logprobs.get(step.step, [])
        train += trainer.get(step.step, [])
    variant.metrics = _mismatch(train, engine)


def _mismatch(trainer: list[list[float]], engine: list[list[float]]) -> dict[str, float]:
    from logprobe import collectors

    t, e, mask = _padded(trainer, engine)
    result = collectors.compute_mismatch(t, e, mask, signatures=False, samples=0)
    return {k: float(v) for k, v in result.stats.items() if k.startswith("mismatch/")}


def _padded(trainer: list[list[float]], engine: list[list[float]]) -> tuple[Any, Any, Any]:
    import torch

    width = max(len(r) for r in trainer)
    t = torch.zeros(len(trainer), width, dtype=torch.float64)
    e = torch.zeros_like(t)
    mask = torch.zeros(len(trainer), width, dtype=torch.bool)
    for i, (a, b) in enumerate(zip(trainer, engine, strict=True)):
        t[i, : len(a)] = torch.tensor(a, dtype=torch.float64)
        e[i, : len(b)] = torch.tensor(b, dtype=torch.float64)
        mask[i, : len(a)] = True
    return t, e, mask


@dataclass(frozen=True)
class Target:
    """The level to reach and how it was measured (``floor`` or ``reference``)."""

    name: str
    level: float
    error: str | None = None

    @property
    def bar(self) -> float:
        """The highest mean |d| still at this level."""
        tolerance = REFERENCE_TOLERANCE if self.name == "reference" else FLOOR_TOLERANCE
        return self.level * tolerance + SLACK


def _target(floors: list[Variant], reference: Variant | None) -> Target:
    """The level to reach: the reference run's replayed level, or this run's own floor where that
    is higher. The floor is the engine at parity settings on this run's tokens, one sequence at a
    time and as one batch, the higher of the two (batch composition moves bf16 results a little).
    Two runs' tokens differ, so a run whose logits grew may not get down to its reference's level
    with any setting; the floor is what its engine can do on its own tokens."""
    measured = [f.level for f in floors if not f.error and math.isfinite(f.level)]
    floor = Target("floor", max(measured)) if measured else None
    usable = reference is not None and not reference.error and math.isfinite(reference.level)
    if usable and (floor is None or reference.level >= floor.level):
        return Target("reference", reference.level)
    if floor is None:
        errors = [f.error for f in floors if f.error]
        return Target("floor", math.nan, errors[0] if errors else "no level measured")
    return floor


def _removed(base: float, level: float, target: Target) -> float | None:
    """The share of the replayed mismatch above the target level that the change removes: 1 when
    it lands on the target, 0 when it changes nothing, negative when it makes things worse."""
    if not all(math.isfinite(x) for x in (base, level, target.level)):
        return None
    excess = base - target.level
    if base <= target.bar:
        return None  # nothing to remove: the run is at the level already
    return round(max(-99.0, min(1.0, (base - level) / excess)), 4)


def _verdict(base: Variant, variants: list[Variant], target: Target) -> Verdict:
    limit = target.bar
    where = target.name
    if base.error or target.error or not math.isfinite(base.level) or not math.isfinite(limit):
        why = base.error or target.error or "no level measured"
        return Verdict(None, base.level, target.level, where, f"replay failed: {why}")
    if base.level <= limit:
        return Verdict(
            {},
            base.level,
            target.level,
            where,
            f"nothing to change: under its recorded settings the run is at its {where}'s level "
            f"({base.level:.3g} against {target.level:.3g})",
        )
    reaching = [v for v in variants if not v.error and not v.refused and v.level <= limit]
    if reaching:
        # The fewest changes; among equals the earliest candidate (the specific fix before the broad
        # one: a cache reset before turning caching off). All of them are at the level already.
        best = min(reaching, key=lambda v: (len(v.changes), _rank(v.name)))
        return Verdict(
            best.changes,
            best.level,
            target.level,
            where,
            f"{_describe(best.changes)} brings mean |d| from {base.level:.3g} to {best.level:.3g} "
            f"({where}: {target.level:.3g})",
        )
    tried = [v for v in variants if not v.error and math.isfinite(v.level)]
    best = min(tried, key=lambda v: v.level) if tried else None
    hint = (
        f"; the most any tried change removes is {best.removed:.0%} ({_describe(best.changes)})"
        if best is not None and best.removed is not None
        else ""
    )
    return Verdict(
        None,
        base.level,
        target.level,
        where,
        f"no tried change brings the run to its {where}'s level ({base.level:.3g} against "
        f"{target.level:.3g}){hint}; the cause is outside the varied settings (the weights the "
        "engine served, or the trainer's side)",
    )


def _rank(name: str) -> int:
    first = name.split("+")[0]
    return list(CANDIDATES).index(first) if first in CANDIDATES else len(CANDIDATES)


def _describe(changes: dict[str, Any]) -> str:
    return ", ".join(f"{k} = {v}" for k, v in changes.items()) or "no change"


def plan_pairs(singles: list[Variant], recorded: Settings, target: Target) -> list[Variant]:
    """When no single change reaches the target, the pairs of the (up to) ``PAIRS_FROM`` singles
    that moved the mismatch most, either way, one of them for the better; they are scored like
    any variant. A change that makes things worse alone can be half of the fix when two faults'
    errors partly cancel: on the seed's V1 default at step 4 a prefix-cache reset alone is 1.12x
    worse (the stale KV offsets part of the raw-logprob gap), and with processed logprobs it
    reaches V0's level. A move under ``PAIR_MIN_EFFECT`` of the excess is no effect (the replays
    are deterministic, so a setting that does not matter moves nothing)."""
    limit = target.bar
    if any(not v.error and v.level <= limit for v in singles):
        return []
    moved = sorted(
        (v for v in singles if not v.error and v.removed is not None and abs(v.removed) > PAIR_MIN_EFFECT),
        key=lambda v: -abs(v.removed or 0.0),
    )[:PAIRS_FROM]
    out = []
    for a, b in itertools.combinations(moved, 2):
        if max(a.removed or 0.0, b.removed or 0.0) <= PAIR_MIN_EFFECT:
            continue  # two changes that only hurt
        changes = {**a.changes, **b.changes}
        out.append(Variant(f"{a.name}+{b.name}", changes, recorded.apply(changes)))
    return out


def _logged_mismatch(plan: Plan) -> dict[str, float]:
    trainer = [q.trainer_logprobs for s in plan.steps for q in s.sequences]
    engine = [q.rollout_logprobs for s in plan.steps for q in s.sequences]
    if not trainer or any(len(a) != len(b) or not a for a, b in zip(trainer, engine, strict=True)):
        return {}
    return _mismatch(trainer, engine)


def _reproduced(plan: Plan, base: Variant) -> float:
    """How far the recorded-settings replay is from what the engine logged (0: bitwise)."""
    worst = math.nan
    for step in plan.steps:
        for q, got in zip(step.sequences, base.logprobs.get(step.step, []), strict=False):
            for a, b in zip(q.rollout_logprobs, got, strict=False):
                if a is not None and math.isfinite(a) and math.isfinite(b):
                    d = abs(a - b)
                    worst = d if math.isnan(worst) else max(worst, d)
    return worst


def _write(
    root: str | Path,
    plan: Plan,
    variant: Variant,
    trainer: dict[int, list[list[float]]],
    stamp: str,
    info: dict[str, Any],
) -> str:
    """The variant as a run of its own (source ``replay``), so every view shows it."""
    from logprobe import collectors

    run_id = f"{plan.run}.replay-{stamp}.{variant.name.replace('+', '-')}"[:200]
    run = collectors.init(
        run_id=run_id,
        root=root,
        name=f"{plan.run} replay: {variant.name}",
        project="logprobe-replay",
        source="replay",
        tags=["replay", plan.run, variant.name],
        config={
            "replays": plan.run,
            "variant": variant.name,
            "changes": variant.changes,
            "settings": variant.settings.as_dict(),
            "applied": variant.applied,
            "worker": info,
            "steps": [s.step for s in plan.steps],
        },
    )
    try:
        for step in plan.steps:
            s = variant.settings
            run.log_engine(
                {
                    "engine": f"vllm-replay ({info.get('vllm')})",
                    "vllm_version": info.get("vllm"),
                    "logprobs_mode": s.logprobs_mode,
                    "enable_prefix_caching": s.enable_prefix_caching,
                    "async_scheduling": bool(variant.applied.get("async_scheduling")),
                    "enforce_eager": s.enforce_eager,
                    "dtype": variant.applied.get("dtype") or s.dtype,
                    "lm_head_dtype": variant.applied.get("head_dtype") or s.head_dtype,
                    "seed": s.seed,
                    "flags": {**s.as_dict(), "applied": variant.applied},
                },
                step=step.step,
            )
            engine = variant.logprobs.get(step.step)
            if not engine:
                continue
            t, e, mask = _padded(trainer[step.step], engine)
            _log_step(run, step, t, e, mask)
    finally:
        run.close()
    return run_id


def _log_step(run: Any, step: StepPlan, trainer: Any, engine: Any, mask: Any) -> None:
    import torch

    width = trainer.shape[1]
    ids = torch.zeros(len(step.sequences), width, dtype=torch.long)
    for i, q in enumerate(step.sequences):
        ids[i, : len(q.token_ids)] = torch.tensor(q.token_ids)
    run.log_mismatch(
        step.step,
        trainer,
        engine,
        mask,
        token_ids=ids,
        policy_version=step.version,
        prompt_ids=[q.prompt_ids for q in step.sequences],
        samples=len(step.sequences),
    )


__all__ = ["CANDIDATES", "Report", "Variant", "Verdict", "replay"]
