"""vLLM ``RequestOutput``s to padded tensors for ``Run.log_mismatch``, plus rollout-side metrics."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class RolloutBatch:
    """One row per completion (``n`` completions of a request are separate rows)."""

    token_ids: torch.Tensor  # [N, T] int64, padded with pad_id
    logprobs: torch.Tensor  # [N, T] float64: the engine's logprob of each sampled token, 0 in padding
    mask: torch.Tensor  # [N, T] bool
    prompt_token_ids: list[list[int]] = field(default_factory=list)
    num_cached_tokens: list[int | None] = field(default_factory=list)
    finish_reasons: list[str | None] = field(default_factory=list)
    weight_versions: list[list[tuple[str, int, int]]] = field(default_factory=list)
    request_ids: list[str] = field(default_factory=list)

    @property
    def lengths(self) -> torch.Tensor:
        return self.mask.sum(dim=1)

    def metrics(self) -> dict[str, float]:
        """Rollout-side per-batch metrics: what the engine generated and how much it reused."""
        n = self.mask.sum().item()
        out: dict[str, float] = {
            "rollout/completions": float(len(self.finish_reasons)),
            "rollout/tokens": float(n),
            "rollout/mean_logprob": (self.logprobs.sum() / max(n, 1)).item() if n else float("nan"),
            "rollout/response_length_mean": self.lengths.double().mean().item() if n else 0.0,
        }
        if not n:
            del out["rollout/mean_logprob"]
        # A request's prompt (and its cache hits) counts once, however many completions it has.
        per_request: dict[str, tuple[int, int | None]] = {}
        for rid, prompt, cached in zip(
            self.request_ids, self.prompt_token_ids, self.num_cached_tokens, strict=True
        ):
            per_request.setdefault(rid, (len(prompt), cached))
        known = [(p, c) for p, c in per_request.values() if c is not None]
        if known:
            prompt_tokens = sum(p for p, _ in known)
            cached = sum(c for _, c in known)
            out["rollout/prefix_cache_hit_tokens"] = float(cached)
            out["rollout/prefix_cache_hit_rate"] = cached / prompt_tokens if prompt_tokens else 0.0
        for reason, count in Counter(r or "none" for r in self.finish_reasons).items():
            out[f"rollout/finish_{reason}"] = count / len(self.finish_reasons)
        versions = {v for spans in self.weight_versions for v, _, _ in spans}
        if versions:
            mixed = sum(len({v for v, _, _ in spans}) > 1 for spans in self.weight_versions)
            out["rollout/weight_versions"] = float(len(versions))
            out["rollout/mixed_weight_version_completions"] = float(mixed)
        return out


def rollout_batch(outputs: Any, *, pad_id: int = 0) -> RolloutBatch:
    """Padded token ids, sampled-token logprobs and mask from ``llm.generate`` outputs.

    Works with both logprob forms (``list[dict[int, Logprob]]`` and ``FlatLogprobs``) and any
    ``SamplingParams(logprobs=k)``, including ``logprobs=0``; the sampled token's entry is the one
    used. Raises ValueError if a completion carries no logprobs (``logprobs=None`` in the request).
    """
    rows: list[tuple[list[int], list[float]]] = []
    batch = RolloutBatch(torch.empty(0), torch.empty(0), torch.empty(0))
    for request in outputs:
        for completion in request.outputs:
            token_ids = list(completion.token_ids)
            rows.append((token_ids, sampled_logprobs(completion, request.request_id)))
            batch.prompt_token_ids.append(list(request.prompt_token_ids or []))
            batch.num_cached_tokens.append(getattr(request, "num_cached_tokens", None))
            batch.finish_reasons.append(completion.finish_reason)
            batch.request_ids.append(str(request.request_id))
            spans = getattr(completion, "weight_versions", None) or []
            batch.weight_versions.append([(str(s.version), int(s.start), int(s.end)) for s in spans])
    width = max((len(ids) for ids, _ in rows), default=0)
    batch.token_ids = torch.full((len(rows), width), pad_id, dtype=torch.int64)
    batch.logprobs = torch.zeros((len(rows), width), dtype=torch.float64)
    batch.mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, (ids, lps) in enumerate(rows):
        batch.token_ids[i, : len(ids)] = torch.tensor(ids, dtype=torch.int64)
        batch.logprobs[i, : len(lps)] = torch.tensor(lps, dtype=torch.float64)
        batch.mask[i, : len(ids)] = True
    return batch


def sampled_logprobs(completion: Any, request_id: Any = "?") -> list[float]:
    """The logprob vLLM reported for each sampled token of one completion."""
    logprobs = completion.logprobs
    token_ids = list(completion.token_ids)
    if logprobs is None:
        raise ValueError(
            f"request {request_id}: the completion has no logprobs; set SamplingParams(logprobs=0)"
        )
    if hasattr(logprobs, "start_indices"):  # FlatLogprobs: the sampled token is first in each span
        values = [logprobs.logprobs[start] for start in logprobs.start_indices]
        firsts = [logprobs.token_ids[start] for start in logprobs.start_indices]
        if firsts != token_ids:
            raise ValueError(f"request {request_id}: flat logprobs do not start with the sampled tokens")
        return values
    if len(logprobs) != len(token_ids):
        raise ValueError(f"request {request_id}: {len(logprobs)} logprob entries for {len(token_ids)} tokens")
    return [position[token].logprob for position, token in zip(logprobs, token_ids, strict=True)]
