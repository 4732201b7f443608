"""Each cause rule on synthetic batches built to carry exactly its signature.

A batch is drawn from a random "policy" (logits over a small vocabulary at T = 0.7); the rollout's
logprobs are then produced the way each fault produces them (raw logprobs, a renormalised nucleus,
old weights for part of the response, a bf16 head, ...). The signatures come from the real collector
(``compute_mismatch``), so these tests cover the path from tensors to a named cause, and each one
can fail: the right cause must rank first, above every other cause, within three steps of onset.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch

from logprobe import monitor
from logprobe.collectors import compute_mismatch

B, T, V = 32, 16, 40
TEMP = 0.7
STEPS = 12
REFERENCE_LEVEL = 1e-6  # the healthy twin's 90th percentile of mean |d|


class Batch:
    """One step's draw: the current policy's logits and an older policy's, and sampled tokens."""

    def __init__(self, gen: torch.Generator) -> None:
        self.z = torch.randn(B, T, V, generator=gen, dtype=torch.float64) * 2.5
        self.z_old = self.z + torch.randn(B, T, V, generator=gen, dtype=torch.float64) * 0.4
        probs = torch.softmax(self.z / TEMP, -1)
        self.tokens = torch.multinomial(probs.view(-1, V), 1, generator=gen).view(B, T)
        self.trainer = self.score(self.z)

    def score(self, logits: torch.Tensor, temp: float = TEMP) -> torch.Tensor:
        return torch.log_softmax(logits / temp, -1).gather(-1, self.tokens[..., None]).squeeze(-1)


def nucleus(logprobs: torch.Tensor, top_p: float) -> torch.Tensor:
    ordered, order = logprobs.sort(-1, descending=True)
    drop_sorted = ordered.exp().cumsum(-1) - ordered.exp() >= top_p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return torch.log_softmax(logprobs.masked_fill(drop, -torch.inf), -1)


def healthy(b: Batch, step: int, gen: torch.Generator) -> dict[str, Any]:
    noise = torch.randn(B, T, generator=gen, dtype=torch.float64) * 1e-7
    return {"rollout": b.trainer + noise}


def raw_logprobs(b: Batch, step: int, gen: torch.Generator) -> dict[str, Any]:
    return {"rollout": b.score(b.z, temp=1.0)}


def truncated(b: Batch, step: int, gen: torch.Generator) -> dict[str, Any]:
    kept = nucleus(torch.log_softmax(b.z / TEMP, -1), 0.8)
    # sample from the nucleus, as the engine does
    tokens = torch.multinomial(kept.exp().view(-1, V), 1, generator=gen).view(B, T)
    b.tokens = tokens
    b.trainer = b.score(b.z)
    return {"rollout": kept.gather(-1, tokens[..., None]).squeeze(-1)}


def stale_cache(b: Batch, step: int, gen: torch.Generator) -> dict[str, Any]:
    return {"rollout": b.trainer if step == 0 else b.score(b.z_old), "hits": 0.0 if step == 0 else 140.0}


def inflight(b: Batch, step: int, gen: torch.Generator) -> dict[str, Any]:
    rollout = b.trainer.clone()
    rollout[:, : T // 2] = b.score(b.z_old)[:, : T // 2]
    return {"rollout": rollout}


def bf16_head(b: Batch, step: int, gen: torch.Generator) -> dict[str, Any]:
    return {"rollout": b.score(b.z.to(torch.bfloat16).to(torch.float64))}


def missed_updates(b: Batch, step: int, gen: torch.Generator) -> dict[str, Any]:
    stale = step % 2 == 1
    return {"rollout": b.score(b.z_old) if stale else b.trainer, "gap": -1.0 if stale else 0.0}


def lagged(b: Batch, step: int, gen: torch.Generator) -> dict[str, Any]:
    lag = min(step, 2)
    return {"rollout": b.score(b.z_old) if lag else b.trainer, "versions": [step - lag] * B}


def off_by_one(b: Batch, step: int, gen: torch.Generator) -> dict[str, Any]:
    noise = torch.randn(B, T, generator=gen, dtype=torch.float64) * 1e-7
    return {"shift": 1, "rollout": b.trainer + noise}


def noise_floor(b: Batch, step: int, gen: torch.Generator) -> dict[str, Any]:
    return {"rollout": b.trainer + torch.randn(B, T, generator=gen, dtype=torch.float64) * 1e-3}


Fault = Callable[[Batch, int, torch.Generator], dict[str, Any]]


def evidence(fault: Fault, seed: int, *, engines=(), events=(), onset: int = 0) -> monitor.Evidence:
    """Run ``fault`` for STEPS steps (healthy before ``onset``) through the collector's signatures."""
    gen = torch.Generator().manual_seed(seed)
    rows: dict[str, list[float]] = {}
    gaps = []
    for step in range(STEPS):
        b = Batch(gen)
        out = (fault if step >= onset else healthy)(b, step, gen)
        trainer, rollout, ids, rollout_ids = b.trainer, out["rollout"], b.tokens, b.tokens
        if out.get("shift"):
            k = out["shift"]
            trainer, ids = trainer[:, k:], ids[:, k:]
            rollout, rollout_ids = rollout[:, :-k], rollout_ids[:, :-k]
        stats = compute_mismatch(
            trainer,
            rollout,
            token_ids=ids,
            rollout_token_ids=rollout_ids,
            policy_version=step,
            rollout_versions=out.get("versions", [step] * B),
            samples=0,
        ).stats
        stats["rollout/prefix_cache_hit_tokens"] = out.get("hits", 0.0)
        gaps.append(out.get("gap", 0.0))
        for name in set(rows) | set(stats):
            rows.setdefault(name, [np.nan] * step).append(stats.get(name, np.nan))
    series = {k: np.asarray(v, float) for k, v in rows.items()}
    return monitor.Evidence(
        "synthetic",
        np.arange(STEPS),
        series,
        "reference",
        REFERENCE_LEVEL,
        REFERENCE_LEVEL / 2,
        list(engines),
        list(events),
        np.asarray(gaps),
    )


SAMPLING = [(0, "sampling_params", {"temperature": TEMP, "top_p": 1.0})]
UPDATES = [(s, "weight_update", {"weight_version": s + 1}) for s in range(STEPS)]

CASES: dict[str, dict[str, Any]] = {
    "logprobs_semantics": {
        "fault": raw_logprobs,
        "engines": [{"step_first": 0, "logprobs_mode": "raw_logprobs"}],
        "events": SAMPLING,
    },
    "sampling_truncation": {
        "fault": truncated,
        "events": [(0, "sampling_params", {"temperature": TEMP, "top_p": 0.8})],
    },
    "stale_prefix_cache": {
        "fault": stale_cache,
        "engines": [{"step_first": 0, "enable_prefix_caching": True}],
        "events": [*UPDATES, *[(s, "stale_prefix_cache", {"weight_version": s + 1}) for s in range(STEPS)]],
    },
    "inflight_weight_update": {
        "fault": inflight,
        "events": [(s, "weight_update", {"generation_in_flight": True}) for s in range(STEPS)],
    },
    "lm_head_precision": {
        "fault": bf16_head,
        "engines": [{"step_first": 0, "lm_head_dtype": "bfloat16"}],
    },
    "stale_weights": {
        "fault": missed_updates,
        "events": [(s, "weight_update", {}) for s in range(STEPS) if (s + 1) % 2 == 0],
    },
    "policy_lag": {"fault": lagged, "events": UPDATES},
    "token_misalignment": {"fault": off_by_one, "events": UPDATES},
    "numeric_noise": {"fault": noise_floor, "events": UPDATES},
}


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("cause", list(CASES))
def test_each_rule_names_its_own_signature_first(cause: str, seed: int) -> None:
    case = CASES[cause]
    ev = evidence(case["fault"], seed, engines=case.get("engines", ()), events=case.get("events", ()))
    ranked = monitor.diagnose_evidence(ev)
    assert ranked, f"{cause}: nothing named"
    top = ranked[0]
    assert top.cause == cause, [(d.cause, d.confidence, d.evidence) for d in ranked]
    assert all(d.confidence < top.confidence for d in ranked[1:]), ranked
    assert top.step_first is not None and top.step_first <= 3, top
    assert 0.0 < top.confidence <= 1.0
    assert any(ch.isdigit() for ch in top.evidence) and top.fix


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_healthy_run_has_no_cause(seed: int) -> None:
    ev = evidence(healthy, seed, engines=[{"step_first": 0, "enable_prefix_caching": True}], events=UPDATES)
    assert monitor.diagnose_evidence(ev) == []


def test_onset_mid_run_is_named_from_that_step() -> None:
    case = CASES["logprobs_semantics"]
    ev = evidence(case["fault"], 0, engines=case["engines"], events=case["events"], onset=6)
    top = monitor.diagnose_evidence(ev)[0]
    assert top.cause == "logprobs_semantics"
    assert 6 <= top.step_first <= 8


def test_a_flag_alone_names_nothing_without_elevated_mismatch() -> None:
    """A bf16 head on a run whose mismatch stays at the reference's level is not a cause."""
    ev = evidence(healthy, 0, engines=[{"step_first": 0, "lm_head_dtype": "bfloat16"}])
    assert monitor.diagnose_evidence(ev) == []


def test_every_cause_has_a_rule_fix_and_source() -> None:
    assert set(monitor.CAUSES) == set(CASES)
    for rule in monitor.RULES:
        assert rule.fix and rule.source and rule.title and rule.judge.__doc__
