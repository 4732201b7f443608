"""The cause library: one small rule per known cause of trainer/engine mismatch.

Each rule reads a run's :class:`Evidence` (per-step ``mismatch/*`` and ``signature/*`` series, the
engine configurations, events, the engine's own weight versions) and says at which steps its
signature is present; :func:`diagnose_evidence` turns that into a confidence in [0, 1], the first
step, one sentence of evidence with numbers, and the fix. Every rule only looks at steps whose
mismatch is *elevated*: above twice the reference run's level (its 90th percentile), or without a
reference above 1e-2 mean |d|, a level no healthy setup reaches; a rule that itself requires the
recorded setting behind its cause (a bf16 lm_head) may look at steps only *raised* 25% above the
reference's median. A healthy run therefore has no cause.

The signatures come from the collector (:mod:`collectors._signatures`); the causes, their tells
and the fixes from ``docs/research/mismatch-causes-and-the-field.md`` (section 3), whose sources each
rule cites.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

ABSOLUTE_LIMIT = 1e-2  # mean |d| no healthy engine/trainer pair reaches (seed: V0 1.3e-6, bf16 model 1.2e-3)
REFERENCE_FACTOR = 2.0  # elevated: this many times the reference's 90th percentile
# A rule whose cause the engine config already shows (a bf16 head) needs less: this many times the
# reference's median, on two of three steps. A bf16 head's error grows with the logits, so on a fresh
# near-uniform policy it starts only 10-50% above a bf16 model's floor (real vLLM: 1.4e-3 against
# 1.28e-3); on the demo's warm-started policy, whose logits stand units apart, 3-8x.
CORROBORATED_FACTOR = 1.25
MIN_STEPS = 2  # a cause must show on at least this many elevated steps
MIN_CONFIDENCE = 0.3
LOW_PRECISION = {"bfloat16", "bf16", "float16", "fp16", "half", "torch.bfloat16", "torch.float16"}


@dataclass(frozen=True)
class Diagnosis:
    """One cause named for a run: what, how sure, since when, why, and what to do."""

    cause: str
    confidence: float
    step_first: int | None
    evidence: str
    fix: str
    title: str = ""
    steps: int = 0  # elevated steps that show the signature

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Evidence:
    """What the rules read about one run, aligned on its steps (NaN where a step lacks a value)."""

    run_id: str
    steps: np.ndarray
    series: dict[str, np.ndarray]
    reference_run: str | None = None
    reference_level: float | None = None  # 90th percentile of the reference's mean |d|
    reference_median: float | None = None  # and its median
    engines: list[dict[str, Any]] = field(default_factory=list)  # oldest first, with step_first
    events: list[tuple[int | None, str, dict[str, Any]]] = field(default_factory=list)
    version_gap: np.ndarray | None = None  # engine weight version minus the trainer's, per step

    def get(self, name: str) -> np.ndarray:
        values = self.series.get(name)
        return values if values is not None else np.full(len(self.steps), np.nan)

    @property
    def limit(self) -> float:
        if self.reference_level is not None and math.isfinite(self.reference_level):
            return max(REFERENCE_FACTOR * self.reference_level, 1e-6)
        return ABSOLUTE_LIMIT

    @property
    def elevated(self) -> np.ndarray:
        with np.errstate(invalid="ignore"):
            return self.get("mismatch/abs_logp_diff_mean") > self.limit

    @property
    def raised(self) -> np.ndarray:
        """Above :data:`CORROBORATED_FACTOR` times the reference's median: the bar for a cause the
        engine's recorded config already points to; without a reference, :attr:`elevated`."""
        if self.reference_median is None or not math.isfinite(self.reference_median):
            return self.elevated
        with np.errstate(invalid="ignore"):
            level = self.get("mismatch/abs_logp_diff_mean")
            return self.elevated | (level > max(CORROBORATED_FACTOR * self.reference_median, 1e-6))

    def engine_value(self, column: str) -> np.ndarray:
        """The engine setting in force at each step (the newest config whose ``step_first`` is at or
        before it), as an object array; None where nothing was recorded."""
        out = np.full(len(self.steps), None, dtype=object)
        for row in self.engines:
            first = row.get("step_first")
            value = row.get(column)
            if value is None:
                value = _flag(row.get("flags"), column)
            out[self.steps >= (first if first is not None else -(2**62))] = value
        return out

    def event_steps(self, kind: str, where: Callable[[dict[str, Any]], bool] = lambda _: True) -> set[int]:
        return {s for s, k, p in self.events if k == kind and s is not None and where(p)}

    def event_payloads(self, kind: str) -> list[dict[str, Any]]:
        return [p for _, k, p in self.events if k == kind]


def _flag(flags: Any, name: str) -> Any:
    if not isinstance(flags, str):
        return None
    try:
        return json.loads(flags).get(name)
    except (ValueError, AttributeError):
        return None


@dataclass(frozen=True)
class Verdict:
    """A rule's raw verdict: where its signature shows, how strongly, and the sentence for it."""

    present: np.ndarray
    score: float  # in [0, 1], how strongly the corroborating evidence speaks
    evidence: str


@dataclass(frozen=True)
class CauseRule:
    cause: str
    title: str
    fix: str
    source: str
    judge: Callable[[Evidence, np.ndarray], Verdict | None]
    weight: float = 0.6  # confidence = weight * share of elevated steps + (1 - weight) * score
    corroborated: bool = False  # judged on Evidence.raised: the rule itself requires a recorded setting


# ------------------------------------------------------------------------------------------ rules


def _balance(ev: Evidence) -> np.ndarray:
    neg, pos = ev.get("signature/frac_neg"), ev.get("signature/frac_pos")
    with np.errstate(invalid="ignore", divide="ignore"):
        return neg / (neg + pos)


def _slope_off(ev: Evidence) -> np.ndarray:
    return np.abs(ev.get("signature/slope") - 1.0)


def _median(values: np.ndarray, mask: np.ndarray) -> float:
    picked = values[mask & np.isfinite(values)]
    return float(np.median(picked)) if picked.size else math.nan


def _temperature(ev: Evidence) -> float | None:
    for payload in ev.event_payloads("sampling_params"):
        if isinstance(payload.get("temperature"), int | float):
            return float(payload["temperature"])
    values = [v for v in ev.engine_value("temperature") if isinstance(v, int | float)]
    return float(values[-1]) if values else None


def logprobs_semantics(ev: Evidence, hot: np.ndarray) -> Verdict | None:
    """Raw logprobs reported while sampling at T != 1: trainer ~ rollout / T, a tight line of slope
    far from 1 (verl/vLLM V1 ``logprobs_mode``; seed)."""
    present = hot & (_slope_off(ev) > 0.1) & (ev.get("signature/r2") > 0.9)
    if not present.any():
        return None
    slope = _median(ev.get("signature/slope"), present)
    r2 = _median(ev.get("signature/r2"), present)
    temp = _temperature(ev)
    matches = temp is not None and temp > 0 and abs(slope - 1 / temp) < 0.15 * (1 / temp)
    modes = [str(v) for v in ev.engine_value("logprobs_mode")[present] if v is not None]
    raw = any(m.startswith("raw") for m in modes)
    said = f"slope {slope:.2f}, R² {r2:.3f}" + (f" (1/T = {1 / temp:.2f} at T = {temp:g})" if temp else "")
    mode = f"; the engine reports {modes[-1]}" if modes else ""
    text = f"trainer logprob ≈ rollout logprob × {slope:.2f} on {present.sum()} steps: {said}{mode}"
    return Verdict(present, 0.5 * matches + 0.5 * raw, text)


def sampling_truncation(ev: Evidence, hot: np.ndarray) -> Verdict | None:
    """Processed logprobs renormalised over a top-p/top-k nucleus against a full-vocabulary trainer:
    the rollout logprob is higher on nearly every token, by log(1 / kept mass) (trl#6789, PR #7269)."""
    balance = _balance(ev)
    # A collapsed nucleus (one kept token: every rollout logprob 0) has no slope; that is no contradiction.
    present = hot & (balance > 0.9) & ~(_slope_off(ev) >= 0.1)
    if not present.any():
        return None
    d_mean = _median(ev.get("signature/d_mean"), present)
    share = _median(balance, present)
    top_p = [p.get("top_p") for p in ev.event_payloads("sampling_params")]
    top_p += list(ev.engine_value("top_p"))
    truncating = [p for p in top_p if isinstance(p, int | float) and p < 1]
    setting = f"; sampling with top_p = {truncating[0]:g}" if truncating else ""
    text = (
        f"the rollout logprob is the higher one on {share:.0%} of differing tokens, by {-d_mean:.3g} "
        f"nats on average (kept mass ≈ {math.exp(d_mean):.2f}){setting}"
    )
    return Verdict(present, 1.0 if truncating else 0.3, text)


def stale_prefix_cache(ev: Evidence, hot: np.ndarray) -> Verdict | None:
    """Prefix caching on and no reset after a weight update: cached prompt KV from the old weights
    (vllm#42019; the seed's V1 migration)."""
    caching = np.array([bool(v) for v in ev.engine_value("enable_prefix_caching")])
    if not caching.any():
        return None
    hits = np.fmax(ev.get("rollout/prefix_cache_hit_tokens"), ev.get("engine/prefix_cache_hits"))
    cached = np.where(np.isfinite(hits), hits > 0, True)
    stale = ev.event_steps("stale_prefix_cache") | ev.event_steps(
        "weight_update", lambda p: p.get("prefix_caching") and p.get("prefix_cache_reset") is False
    )
    since = (
        np.array([any(s <= step for s in stale) for step in ev.steps])
        if stale
        else np.zeros(len(ev.steps), bool)
    )
    present = hot & caching & cached & (since if stale else True)
    if not present.any():
        return None
    level_hit = _median(ev.get("mismatch/abs_logp_diff_mean"), present)
    text = (
        f"prefix caching on, {len(stale)} weight update(s) without a prefix-cache reset, and mean |d| "
        f"{level_hit:.3g} on {present.sum()} steps that served cached prompt tokens"
    )
    return Verdict(present, 1.0 if stale else 0.2, text)


def inflight_weight_update(ev: Evidence, hot: np.ndarray) -> Verdict | None:
    """An update that lands mid-generation: a response's early and late tokens come from two
    policies, so |d| changes along the response (AReaL / vLLM per-token versions)."""
    quarters = np.stack([ev.get(f"signature/abs_d_pos_q{i}") for i in range(1, 5)])
    with np.errstate(invalid="ignore", divide="ignore"):  # fmax/fmin skip NaN without a warning
        split = np.fmax.reduce(quarters, 0) / np.fmin.reduce(quarters, 0)
    present = hot & (split > 3.0)
    if not present.any():
        return None
    first, last = _median(quarters[0], present), _median(quarters[3], present)
    inflight = ev.event_steps("weight_update", lambda p: bool(p.get("generation_in_flight")))
    text = (
        f"mean |d| {first:.3g} in the first quarter of responses against {last:.3g} in the last, on "
        f"{present.sum()} steps; {len(inflight)} weight update(s) landed while generation was in flight"
    )
    return Verdict(present, 1.0 if inflight else 0.2, text)


def lm_head_precision(ev: Evidence, hot: np.ndarray) -> Verdict | None:
    """The engine's final projection in bf16/fp16 against an fp32 trainer: a symmetric floor, raised
    at every token, that no setting but the head's dtype moves (seed)."""
    heads = ev.engine_value("lm_head_dtype")
    low = np.array([str(v).lower() in LOW_PRECISION for v in heads])
    balance = _balance(ev)
    present = hot & low & (balance > 0.25) & (balance < 0.75) & (_slope_off(ev) < 0.1)
    if not present.any():
        return None
    level = _median(ev.get("mismatch/abs_logp_diff_mean"), present)
    ref = f" ({level / ev.reference_level:.0f}x the reference's)" if ev.reference_level else ""
    text = (
        f"the engine computes lm_head in {heads[present][-1]}; mean |d| {level:.3g}{ref}, symmetric "
        f"({_median(balance, present):.0%} of differing tokens have d < 0), slope "
        f"{_median(ev.get('signature/slope'), present):.3f}"
    )
    return Verdict(present, 1.0, text)


def stale_weights(ev: Evidence, hot: np.ndarray) -> Verdict | None:
    """A weight update that never reached the engine: its own version falls behind the trainer's,
    and the mismatch is spiky, high exactly after the missed updates (trl#5312; NeMo-RL "spiky means
    buggy refit")."""
    behind = np.zeros(len(ev.steps), bool)
    if ev.version_gap is not None:
        with np.errstate(invalid="ignore"):
            behind = ev.version_gap < 0
    updates = ev.event_steps("weight_update")
    missing = np.zeros(len(ev.steps), bool)
    if len(updates) >= len(ev.steps) // 3:  # the run records its updates: a gap is a missed one
        missing = np.array([i > 0 and (step - 1) not in updates for i, step in enumerate(ev.steps)])
    present = hot & (behind | missing)
    if not present.any():
        return None
    level = ev.get("mismatch/abs_logp_diff_mean")
    on, off = _median(level, present), _median(level, ~(behind | missing))
    text = (
        f"on {present.sum()} steps the engine served older weights than the trainer sent "
        f"({behind.sum()} with its own version behind, {missing.sum()} after an update with no "
        f"weight_update recorded); mean |d| {on:.3g} there against {off:.3g} on the other steps"
    )
    contrast = 1.0 if not math.isfinite(off) or on > 3 * off else 0.3
    return Verdict(present, 0.5 * bool(behind.any()) + 0.5 * contrast, text)


def policy_lag(ev: Evidence, hot: np.ndarray) -> Verdict | None:
    """Asynchronous rollouts sampled from an older policy: mismatch that grows with the recorded
    version lag (AReaL per-token versions; verl param_version_diversity)."""
    lag = ev.get("signature/lag_mean")
    with np.errstate(invalid="ignore"):
        present = hot & (lag > 0)
    if not present.any():
        return None
    level = ev.get("mismatch/abs_logp_diff_mean")
    with np.errstate(invalid="ignore"):
        fresh = np.isfinite(lag) & (lag <= 0)
    on, off = _median(level, present), _median(level, fresh)
    grows = not math.isfinite(off) or on > 3 * off
    versus = f" against {off:.3g} at lag 0" if math.isfinite(off) else ""
    text = (
        f"rollouts {_median(lag, present):.3g} policy versions behind the trainer on {present.sum()} "
        f"steps; mean |d| {on:.3g} there{versus}"
    )
    return Verdict(present, 1.0 if grows else 0.3, text)


def token_misalignment(ev: Evidence, hot: np.ndarray) -> Verdict | None:
    """Trainer and rollout logprobs paired at the wrong positions (off-by-one plumbing,
    retokenisation): they agree far better shifted by one, or the token ids differ (eval-protocol
    #457; trl#5224)."""
    shift0 = ev.get("signature/align_shift0")
    shifted = np.fmin(ev.get("signature/align_shift_next"), ev.get("signature/align_shift_prev"))
    ids = ev.get("signature/token_id_mismatch_frac")
    with np.errstate(invalid="ignore"):
        by_shift = shifted < 0.5 * shift0
        by_ids = ids > 0.01
    present = hot & (by_shift | by_ids)
    if not present.any():
        return None
    text = (
        f"mean |d| {_median(shift0, present):.3g} as paired, {_median(shifted, present):.3g} with the "
        f"sequences offset by one position"
    )
    if (present & by_ids).any():
        text += f"; {_median(ids, present):.0%} of token ids differ between trainer and rollout"
    return Verdict(
        present, 0.5 * bool((present & by_shift).any()) + 0.5 * bool((present & by_ids).any()), text
    )


def numeric_noise(ev: Evidence, hot: np.ndarray) -> Verdict | None:
    """A small symmetric floor above the reference with none of the other signatures: kernels,
    batch composition, reduction order (trl#6789 comment; NeMo-RL dtensor-tp-accuracy)."""
    balance = _balance(ev)
    present = (
        hot & (balance > 0.25) & (balance < 0.75) & (_slope_off(ev) < 0.05) & (ev.get("signature/r2") > 0.99)
    )
    if not present.any():
        return None
    level = _median(ev.get("mismatch/abs_logp_diff_mean"), present)
    ref = f", {level / ev.reference_level:.1f}x the reference's" if ev.reference_level else ""
    text = f"a symmetric floor of mean |d| {level:.3g}{ref} on {present.sum()} steps, with no other signature"
    return Verdict(present, 0.0, text)


RULES: tuple[CauseRule, ...] = (
    CauseRule(
        "logprobs_semantics",
        "Raw vs processed logprobs",
        "Report processed logprobs (vLLM V1: logprobs_mode='processed_logprobs'), or score the trainer "
        "at the temperature the engine's logprobs use.",
        "vLLM V1 logprobs_mode docs; verl rollout_corr.md; seed migration",
        logprobs_semantics,
    ),
    CauseRule(
        "sampling_truncation",
        "Top-p / top-k truncation",
        "Apply the same top-p/top-k mask in the trainer (sampling-mask replay), or report raw logprobs "
        "at the sampling temperature and correct with importance sampling.",
        "trl#6789, trl PR #7269; vLLM RFC #42259; prime-rl PR #3235",
        sampling_truncation,
    ),
    CauseRule(
        "stale_prefix_cache",
        "Stale prefix cache after a weight update",
        "Reset the prefix cache after every weight update (LLM.reset_prefix_cache()), or turn prefix "
        "caching off for rollouts.",
        "vllm#42019; SGLang FAQ; seed migration",
        stale_prefix_cache,
    ),
    CauseRule(
        "inflight_weight_update",
        "Weight update during generation",
        "Pause generation for weight updates (vLLM pause_generation / resume_generation), or record "
        "per-token weight versions and correct each segment against its own policy.",
        "AReaL actor.py; vLLM async_rl.md",
        inflight_weight_update,
    ),
    CauseRule(
        "lm_head_precision",
        "lm_head precision",
        "Compute the engine's lm_head and logits in float32 (vLLM: hf_overrides={'head_dtype': "
        "'float32'}), or the trainer's in the engine's dtype.",
        "seed migration; MiniMax-M1 fp32 head",
        lm_head_precision,
        corroborated=True,
    ),
    CauseRule(
        "stale_weights",
        "Weights never reached the engine",
        "Check the weight sync: make the engine acknowledge each update with its version (vLLM "
        "/weight_checker, a checksum of a few tensors) and fail the step when it does not.",
        "trl#5312; NeMo-RL grpo.md; vLLM weight_checker",
        stale_weights,
    ),
    CauseRule(
        "policy_lag",
        "Asynchronous policy lag",
        "Bound the staleness (max off-policy steps), and correct with per-token importance sampling "
        "by version (TIS/MIS).",
        "AReaL actor.py; verl detach_utils.py; vLLM async_rl.md",
        policy_lag,
    ),
    CauseRule(
        "token_misalignment",
        "Token misalignment",
        "Align the trainer's logprobs with the rollout's tokens: check the logits slice "
        "(logits[:, prompt_len - 1 : -1]) and that both sides score the same token ids (no retokenising).",
        "eval-protocol/python-sdk#457; trl#5224; vLLM blog 'No More Retokenization Drift'",
        token_misalignment,
    ),
    CauseRule(
        "numeric_noise",
        "Numeric noise",
        "Usually benign: compare with batch-invariant kernels, the same micro-batch size on both sides, "
        "or fp32 logits; correct with truncated importance sampling if it matters.",
        "trl#6789 comment; NeMo-RL dtensor-tp-accuracy.md",
        numeric_noise,
        weight=0.5,
    ),
)
CAUSES = tuple(rule.cause for rule in RULES)


def diagnose_evidence(ev: Evidence) -> list[Diagnosis]:
    """Every cause whose signature shows on elevated steps, ranked by confidence.

    ``numeric_noise`` only counts the elevated steps no other cause explains. A cause needs
    :data:`MIN_STEPS` steps and :data:`MIN_CONFIDENCE`; its ``step_first`` is the first step from
    which it shows on at least two of three consecutive steps.
    """
    hot, raised = ev.elevated, ev.raised
    if not raised.any():
        return []
    found: list[Diagnosis] = []
    explained = np.zeros(len(ev.steps), bool)
    for rule in RULES:
        bar = raised if rule.corroborated else hot
        mask = bar & ~explained if rule.cause == "numeric_noise" else bar
        n_bar = int(bar.sum())
        verdict = rule.judge(ev, mask) if n_bar else None
        if verdict is None or int(verdict.present.sum()) < MIN_STEPS:
            continue
        share = float(verdict.present.sum()) / n_bar
        confidence = round(min(1.0, rule.weight * share + (1 - rule.weight) * verdict.score), 3)
        if confidence < MIN_CONFIDENCE:
            continue
        explained |= verdict.present
        found.append(
            Diagnosis(
                rule.cause,
                confidence,
                _first(ev.steps, verdict.present),
                verdict.evidence,
                rule.fix,
                rule.title,
                int(verdict.present.sum()),
            )
        )
    return sorted(found, key=lambda d: (-d.confidence, CAUSES.index(d.cause)))


def _first(steps: np.ndarray, present: np.ndarray) -> int | None:
    idx = np.flatnonzero(present)
    for i in idx:
        if present[i : i + 3].sum() >= 2:
            return int(steps[i])
    return int(steps[idx[0]]) if idx.size else None
