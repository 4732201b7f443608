"""The standard RL health metrics from tensors the trainer already has, in one host transfer."""

from __future__ import annotations

from typing import Any

import torch

from logprobe.collectors._tensors import (
    as_mask,
    as_tensor,
    check_tensor,
    same_shape,
)
from logprobe.collectors._values import real_number, whole_number

DEFAULT_CLIP_EPS = 0.2
DEFAULT_ENTROPY_CHUNK = 4096


def rl_stats(
    *,
    logprobs: Any = None,
    old_logprobs: Any = None,
    advantages: Any = None,
    ref_logprobs: Any = None,
    logits: Any = None,
    entropy: Any = None,
    mask: Any = None,
    rewards: Any = None,
    response_lengths: Any = None,
    clip_eps: float = DEFAULT_CLIP_EPS,
    clip_eps_high: float | None = None,
    entropy_chunk: int = DEFAULT_ENTROPY_CHUNK,
) -> dict[str, float]:
    """Whichever of these the given tensors allow, as plain floats (log them with ``Run.log``):

    - ``train/clip_frac``: tokens where PPO's clipped surrogate is the active branch (verl's
      ``pg_clipfrac``: ``-A * clip(r, 1-eps, 1+eps_high) > -A * r``), ``r = exp(logprobs - old)``;
      and ``train/ppo_kl`` = mean(old - new) (k1). Needs logprobs, old_logprobs, advantages
      (per token, or per sequence ``[B]`` broadcast over tokens).
    - ``train/kl_ref``: k3 estimator of KL(policy || reference), mean(exp(ref - lp) - (ref - lp) - 1).
    - ``train/entropy``: mean token entropy, from ``logits`` ``[..., V]`` in row chunks (never a
      full-vocabulary float copy of the whole batch), or from a given per-token ``entropy``.
    - ``reward/mean``, ``reward/std`` (population), ``response/length_mean|min|max`` (from
      ``response_lengths``, else from the mask of ``[B, T]`` tokens).
    """
    clip_eps = real_number("clip_eps", clip_eps, low=0.0, low_closed=True)
    if clip_eps_high is not None:
        clip_eps_high = real_number("clip_eps_high", clip_eps_high, low=0.0, low_closed=True)
    entropy_chunk = whole_number("entropy_chunk", entropy_chunk)
    if entropy_chunk < 1:
        raise ValueError(f"entropy_chunk must be >= 1, got {entropy_chunk}")
    names: list[str] = []
    values: list[torch.Tensor] = []
    given = {
        "logprobs": logprobs,
        "old_logprobs": old_logprobs,
        "advantages": advantages,
        "ref_logprobs": ref_logprobs,
        "logits": logits,
        "entropy": entropy,
        "mask": mask,
        "rewards": rewards,
        "response_lengths": response_lengths,
    }
    for name, value in given.items():
        if isinstance(value, torch.Tensor):
            check_tensor(name, value)  # before any other input is moved to its device
    ref = next((x for x in (logprobs, logits, entropy, rewards) if isinstance(x, torch.Tensor)), None)
    device = ref.device if ref is not None else None
    f64 = torch.float64

    def real(name: str, value: Any, list_dtype: torch.dtype, on: torch.device | None) -> torch.Tensor:
        return as_tensor(name, value, on, list_dtype=list_dtype, allow_bool=False)

    lp = real("logprobs", logprobs, f64, device) if logprobs is not None else None
    ent = real("entropy", entropy, f64, device) if entropy is not None else None
    lg = real("logits", logits, torch.float32, device) if logits is not None else None
    # Token-level metrics share one [B, T] (or packed) shape and one mask.
    token_like = lp if lp is not None else ent if ent is not None else None
    if lg is not None:
        if lg.ndim < 2 or lg.shape[-1] == 0:
            raise ValueError(f"logits must be [..., V] with V >= 1, got shape {tuple(lg.shape)}")
        if token_like is not None and tuple(lg.shape[:-1]) != tuple(token_like.shape):
            raise ValueError(
                f"logits has shape {tuple(lg.shape)} but the tokens have shape "
                f"{tuple(token_like.shape)}; logits must be [*token_shape, V]"
            )
        token_like = lg[..., 0] if token_like is None else token_like
    if ent is not None and lp is not None:
        same_shape("entropy", ent, "logprobs", lp)
    valid = as_mask(mask, token_like) if token_like is not None else None
    count = valid.to(f64).sum() if valid is not None else None

    def masked_mean(x: torch.Tensor) -> torch.Tensor:
        # where(), not a product: padding often holds -inf/NaN logprobs, and NaN * 0 is NaN.
        return torch.where(valid, x.to(f64), 0.0).sum() / count.clamp_min(1.0)

    if lp is not None:
        lp = lp.to(f64)
        if old_logprobs is not None and advantages is not None:
            old = real("old_logprobs", old_logprobs, f64, lp.device).to(f64)
            same_shape("old_logprobs", old, "logprobs", lp)
            adv = real("advantages", advantages, f64, lp.device).to(f64)
            if adv.shape != lp.shape:
                if adv.ndim == 1 and lp.ndim == 2 and adv.shape[0] == lp.shape[0]:
                    adv = adv[:, None].expand_as(lp)
                else:
                    raise ValueError(
                        f"advantages has shape {tuple(adv.shape)} but logprobs has shape "
                        f"{tuple(lp.shape)}; give one per token or one per sequence"
                    )
            ratio = torch.exp(lp - old)
            high = clip_eps if clip_eps_high is None else clip_eps_high
            unclipped = -adv * ratio
            clipped = -adv * torch.clamp(ratio, 1.0 - clip_eps, 1.0 + high)
            names += ["train/clip_frac", "train/ppo_kl"]
            values += [masked_mean((clipped > unclipped).to(f64)), masked_mean(old - lp)]
        if ref_logprobs is not None:
            ref_lp = real("ref_logprobs", ref_logprobs, f64, lp.device).to(f64)
            same_shape("ref_logprobs", ref_lp, "logprobs", lp)
            diff = ref_lp - lp
            names.append("train/kl_ref")
            values.append(masked_mean(torch.exp(diff) - diff - 1.0))

    if ent is not None:
        names.append("train/entropy")
        values.append(masked_mean(ent))
    elif lg is not None:
        names.append("train/entropy")
        values.append(masked_mean(token_entropy(lg, entropy_chunk)))
    token_level = set(names)

    if rewards is not None:
        rw = as_tensor("rewards", rewards, device, list_dtype=f64).to(f64).reshape(-1)
        if rw.numel():
            names += ["reward/mean", "reward/std"]
            values += [rw.mean(), rw.std(correction=0)]

    lengths = None
    if response_lengths is not None:
        lengths = as_tensor("response_lengths", response_lengths, device, list_dtype=f64)
        lengths = lengths.to(f64).reshape(-1)
    elif valid is not None and valid.ndim == 2:
        lengths = valid.to(f64).sum(dim=-1)
        token_level |= {"response/length_mean", "response/length_min", "response/length_max"}
    if lengths is not None and lengths.numel():
        names += ["response/length_mean", "response/length_min", "response/length_max"]
        values += [lengths.mean(), lengths.min(), lengths.max()]

    if not values:
        return {}
    if count is not None:
        values.append(count)
    host = torch.stack([v.to(f64).to(values[0].device) for v in values]).cpu().tolist()  # one transfer
    stats = dict(zip(names, host, strict=False))
    if count is not None and host[-1] == 0:
        # No valid token: token-level means are undefined, not zero.
        stats = {k: v for k, v in stats.items() if k not in token_level}
    return stats


def token_entropy(logits: torch.Tensor, chunk: int = DEFAULT_ENTROPY_CHUNK) -> torch.Tensor:
    """Per-token entropy of softmax(logits) over the last axis, ``chunk`` rows at a time in float32."""
    chunk = whole_number("entropy_chunk", chunk)
    if chunk < 1:
        raise ValueError(f"entropy_chunk must be >= 1, got {chunk}")
    flat = logits.reshape(-1, logits.shape[-1])
    out = torch.empty(flat.shape[0], dtype=torch.float32, device=logits.device)
    for start in range(0, flat.shape[0], chunk):
        block = flat[start : start + chunk].float()
        logz = torch.logsumexp(block, dim=-1)
        out[start : start + chunk] = logz - (torch.softmax(block, dim=-1) * block).sum(dim=-1)
    return out.reshape(logits.shape[:-1])
