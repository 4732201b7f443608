"""Trainer-vs-rollout logprob mismatch statistics, computed in one pass on the tensors' device.

Everything is reduced on the device and packed into one float64 vector, so a step costs exactly one
host transfer (no ``.item()`` per metric, no boolean indexing, which would sync on CUDA). Inputs are
upcast to float64: ``k3 = rho - 1 - d`` cancels catastrophically in float32 when ``d`` is ~1e-4.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from logprobe.collectors._signatures import (
    LAG_METRICS,
    SIGNATURE_METRICS,
    TOKEN_ID_METRIC,
    lag_terms,
    signature_terms,
    token_id_term,
    token_sample,
)
from logprobe.collectors._tensors import (
    Segments,
    as_mask,
    as_tensor,
    same_shape,
    segments,
)
from logprobe.collectors._values import real_number, whole_number

DEFAULT_EPS = 0.2
DEFAULT_C = 2.0
DEFAULT_TOP_K = 16
DEFAULT_SAMPLES = 2  # whole sequences kept per step for drill-down, diagnosis and replay
_POS = (1e-6, 1e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0, 10.0)
# Fixed, symmetric log-ratio bin edges (so heatmaps line up across steps and runs); the centre bin
# (-1e-6, 1e-6] means "identical", the outer bins run to +-inf.
HIST_EDGES: tuple[float, ...] = tuple(-e for e in reversed(_POS)) + _POS

# Order of the stats in the transferred vector; names per the design brief.
_STATS = (
    "mismatch/n_tokens",
    "mismatch/n_nonfinite",
    "mismatch/k1",
    "mismatch/k2",
    "mismatch/k3",
    "mismatch/abs_logp_diff_mean",
    "mismatch/abs_logp_diff_max",
    "mismatch/abs_prob_diff_mean",
    "mismatch/abs_prob_diff_max",
    "mismatch/prob_pearson",
    "mismatch/ratio_mean",
    "mismatch/ratio_std",
    "mismatch/ratio_min",
    "mismatch/ratio_max",
    "mismatch/chi2",
    "mismatch/ess",
    "mismatch/frac_outside_eps",
    "mismatch/frac_outside_C",
    "mismatch/seq_log_ratio_mean",
    "mismatch/seq_log_ratio_abs_max",
    "mismatch/seq_k3_max",
)
MISMATCH_METRICS = _STATS

# ``prob_pearson`` is left out of a step whose trainer-side token probabilities have a coefficient
# of variation (std / mean) under this, as it is for a single token. With dp ~ p dlogp,
# 1 - r ~ var(dp) / (2 var(p)) ~ var(dlogp) / (2 cv^2): once a policy has collapsed (every sampled
# token at p ~ 0.999, cv ~ 1e-5) the correlation measures the engines' rounding against a spread of
# nothing; on the demo's healthy vLLM runs it fell to 0.40 at 1e-5 |dp| once entropy reached 0.03,
# a false "below 0.99". At cv 0.01 a healthy engine's |dlogp| of ~1e-3 alone keeps r over 0.99. A
# near-uniform policy (p ~ 1/V, varying by tens of percent) keeps it: its spread is relative.
PEARSON_MIN_SPREAD = 0.01


@dataclass
class MismatchResult:
    stats: dict[str, float]
    histogram: list[dict[str, Any]] = field(default_factory=list)  # bin, lo, hi, count
    worst: list[dict[str, Any]] = field(default_factory=list)  # worst tokens by |log ratio|
    # whole sequences: seq_index, reason, token_ids, trainer_logprobs, rollout_logprobs, prompt_len,
    # rollout_version
    sequences: list[dict[str, Any]] = field(default_factory=list)


def compute_mismatch(
    trainer_logprobs: Any,
    rollout_logprobs: Any,
    mask: Any = None,
    *,
    seq_lens: Any = None,
    token_ids: Any = None,
    rollout_token_ids: Any = None,
    rollout_versions: Any = None,
    policy_version: int | None = None,
    prompt_lens: Any = None,
    eps: float = DEFAULT_EPS,
    C: float = DEFAULT_C,  # noqa: N803  (the name used in the literature)
    top_k: int = DEFAULT_TOP_K,
    signatures: bool = True,
    samples: int = DEFAULT_SAMPLES,
    sample_seed: int = 0,
) -> MismatchResult:
    """All ``mismatch/*`` metrics for one step, and with ``signatures`` the ``signature/*`` ones that
    tell causes apart; see docs/design.md and :mod:`collectors._signatures` for the formulas.

    Tokens where either logprob is NaN/Inf are left out of every statistic and counted in
    ``mismatch/n_nonfinite``. With no valid token, only the two counts are returned (no NaNs).
    ``ratio_std`` is the population standard deviation.

    ``rollout_token_ids`` (the engine's ids, beside the trainer's ``token_ids``) adds the token-id
    disagreement; ``rollout_versions`` (one policy version per sequence) with ``policy_version`` adds
    the lag signatures. ``samples`` whole sequences are returned for the ``sequences`` table: the one
    with the largest mean |d| and others drawn with ``sample_seed``; ``prompt_lens`` (per sequence)
    is recorded with them.
    """
    eps = real_number("eps", eps, low=0.0, high=1.0)
    C = real_number("C", C, low=1.0)  # noqa: N806
    top_k = whole_number("top_k", top_k)
    samples = whole_number("samples", samples)
    if samples < 0:
        raise ValueError(f"samples must be >= 0, got {samples}")
    f64 = torch.float64
    trainer = as_tensor("trainer_logprobs", trainer_logprobs, list_dtype=f64, allow_bool=False)
    rollout = as_tensor(
        "rollout_logprobs", rollout_logprobs, trainer.device, list_dtype=f64, allow_bool=False
    )
    same_shape("rollout_logprobs", rollout, "trainer_logprobs", trainer)
    valid_in = as_mask(mask, trainer)
    segs = segments(trainer.shape, seq_lens, trainer.device)
    seq, pos, n_seq = segs.seq, segs.pos, segs.count
    ids = _ids("token_ids", token_ids, trainer)
    rollout_ids = _ids("rollout_token_ids", rollout_token_ids, trainer)
    versions = _per_sequence("rollout_versions", rollout_versions, n_seq, trainer.device)
    prompts = _per_sequence("prompt_lens", prompt_lens, n_seq, trainer.device)
    if versions is not None and policy_version is None:
        raise ValueError("rollout_versions needs policy_version (the trainer's) to measure the lag")
    if trainer.numel() == 0:
        return MismatchResult({"mismatch/n_tokens": 0.0, "mismatch/n_nonfinite": 0.0})

    t = trainer.reshape(-1).to(f64)
    r = rollout.reshape(-1).to(f64)
    m = valid_in.reshape(-1)
    finite = torch.isfinite(t) & torch.isfinite(r)
    valid = m & finite
    v = valid.to(f64)
    zero = torch.zeros((), dtype=f64, device=t.device)
    d = torch.where(valid, t - r, zero)
    rho = torch.exp(d)  # exactly 1 where invalid, so sums below need no extra masking
    n = v.sum()
    inv_n = 1.0 / n.clamp_min(1.0)
    k3_tok = rho - 1.0 - d
    abs_d = d.abs()
    p_t = torch.where(valid, torch.exp(torch.where(valid, t, zero)), zero)
    p_r = torch.where(valid, torch.exp(torch.where(valid, r, zero)), zero)
    abs_dp = (p_t - p_r).abs()
    mean_pt, mean_pr = p_t.sum() * inv_n, p_r.sum() * inv_n
    ct, cr = (p_t - mean_pt) * v, (p_r - mean_pr) * v
    pearson = (ct * cr).sum() / torch.sqrt((ct * ct).sum() * (cr * cr).sum())
    spread = torch.sqrt((ct * ct).sum() * inv_n) / mean_pt.clamp_min(1e-300)
    pearson = torch.where(spread >= PEARSON_MIN_SPREAD, pearson, torch.full_like(pearson, math.nan))
    ratio_mean = (rho * v).sum() * inv_n
    ratio_var = (((rho - ratio_mean) ** 2) * v).sum() * inv_n
    inf = torch.tensor(math.inf, dtype=f64, device=t.device)
    rho_sq_mean = (rho * rho * v).sum() * inv_n
    outside_eps = ((rho < 1 - eps) | (rho > 1 + eps)) & valid
    outside_c = ((rho < 1 / C) | (rho > C)) & valid

    seq_sum_d = torch.zeros(n_seq, dtype=f64, device=t.device).index_add_(0, seq, d)
    seq_count = torch.zeros(n_seq, dtype=f64, device=t.device).index_add_(0, seq, v)
    seq_k3 = torch.zeros(n_seq, dtype=f64, device=t.device).index_add_(0, seq, k3_tok)
    n_seq_valid = (seq_count > 0).to(f64).sum()

    stats = torch.stack(
        [
            n,
            (m & ~finite).to(f64).sum(),
            -d.sum() * inv_n,
            (0.5 * d * d).sum() * inv_n,
            k3_tok.sum() * inv_n,
            abs_d.sum() * inv_n,
            abs_d.max(),
            abs_dp.sum() * inv_n,
            abs_dp.max(),
            pearson,
            ratio_mean,
            ratio_var.sqrt(),
            torch.where(valid, rho, inf).min(),
            torch.where(valid, rho, -inf).max(),
            rho_sq_mean - 1.0,
            ratio_mean * ratio_mean / rho_sq_mean,
            outside_eps.to(f64).sum() * inv_n,
            outside_c.to(f64).sum() * inv_n,
            seq_sum_d.sum() / n_seq_valid.clamp_min(1.0),
            seq_sum_d.abs().max(),
            (seq_k3 / seq_count.clamp_min(1.0)).max(),
        ]
    )

    edges = torch.tensor(HIST_EDGES, dtype=f64, device=t.device)
    counts = torch.bincount(torch.bucketize(d, edges), weights=v, minlength=len(HIST_EDGES) + 1)

    k = max(0, min(top_k, d.numel()))
    worst_key, worst_idx = torch.topk(torch.where(valid, abs_d, -1.0), k)
    worst_cols = [
        worst_key,
        worst_idx.to(f64),
        t[worst_idx],
        r[worst_idx],
        seq[worst_idx].to(f64),
        pos[worst_idx].to(f64),
    ]
    if ids is not None:
        worst_cols.append(ids.reshape(-1)[worst_idx].to(f64))

    names, stat_parts = list(_STATS), [stats]
    if signatures:
        sample = token_sample(trainer.shape, t, r, valid, seq, pos, segs.packed)
        terms, sampled_count, sampled_abs = signature_terms(**sample, n_seq=n_seq, width=segs.width)
        stat_parts.append(terms)
        names += SIGNATURE_METRICS
        if ids is not None and rollout_ids is not None:
            stat_parts.append(token_id_term(ids, rollout_ids, valid, n))
            names.append(TOKEN_ID_METRIC)
        if versions is not None:
            stat_parts.append(lag_terms(policy_version - versions, sampled_count, sampled_abs))
            names += LAG_METRICS
    parts = {"stats": torch.cat(stat_parts), "hist": counts, "worst": torch.cat(worst_cols)}
    picked = _pick_sequences(seq_k3, seq_count, samples, sample_seed) if samples and n_seq else None
    if picked is not None:
        parts["sample"] = _sample_rows(picked, segs, t, r, valid, ids, versions, prompts)

    sizes = [p.numel() for p in parts.values()]
    host = torch.cat([p.reshape(-1) for p in parts.values()]).cpu().tolist()  # the one host transfer
    chunks, offset = {}, 0
    for key, size in zip(parts, sizes, strict=True):
        chunks[key], offset = host[offset : offset + size], offset + size

    values = dict(zip(names, chunks["stats"], strict=True))
    n_valid = values["mismatch/n_tokens"]
    if n_valid == 0:
        return MismatchResult(
            {"mismatch/n_tokens": 0.0, "mismatch/n_nonfinite": values["mismatch/n_nonfinite"]}
        )
    result = {name: value for name, value in values.items() if not math.isnan(value)}
    bounds = (-math.inf, *HIST_EDGES, math.inf)
    histogram = [
        {"bin": i, "lo": bounds[i], "hi": bounds[i + 1], "count": int(c)}
        for i, c in enumerate(chunks["hist"])
    ]
    cols = [chunks["worst"][j * k : (j + 1) * k] for j in range(len(worst_cols))]
    worst = []
    for j in range(k):
        if cols[0][j] < 0:
            break  # past the valid tokens
        worst.append(
            {
                "trainer_logprob": cols[2][j],
                "rollout_logprob": cols[3][j],
                "log_ratio": cols[2][j] - cols[3][j],
                "seq_index": int(cols[4][j]),
                "position": int(cols[5][j]),
                "token_id": int(cols[6][j]) if ids is not None else None,
            }
        )
    sequences = (
        _unpack_sample(chunks["sample"], picked, samples, segs.width, ids is not None)
        if picked is not None
        else []
    )
    return MismatchResult(result, histogram, worst, sequences)


def _ids(name: str, value: Any, like: torch.Tensor) -> torch.Tensor | None:
    if value is None:
        return None
    ids = as_tensor(name, value, like.device, list_dtype=torch.int64, allow_bool=False)
    if ids.is_floating_point():
        # A float id (NaN, 1e30) cannot name a token; it would fail later, far from its cause.
        raise TypeError(f"{name} must hold integers, got dtype {ids.dtype}")
    same_shape(name, ids, "trainer_logprobs", like)
    return ids


def _per_sequence(name: str, value: Any, n_seq: int, device: torch.device) -> torch.Tensor | None:
    """One integer per sequence (versions, prompt lengths), as an int64 tensor on ``device``."""
    if value is None:
        return None
    values = as_tensor(name, value, device, list_dtype=torch.int64, allow_bool=False)
    if values.is_floating_point() or values.shape != (n_seq,):
        raise ValueError(
            f"{name} must hold one integer per sequence ({n_seq}), got {values.dtype} {tuple(values.shape)}"
        )
    return values.to(torch.int64)


def _pick_sequences(seq_k3: torch.Tensor, seq_count: torch.Tensor, samples: int, seed: int) -> torch.Tensor:
    """The sequence with the largest mean k3 (the largest mismatch) first, then ``samples`` drawn at
    random (host RNG, so no sync); after the transfer a repeat of the first is dropped and the rest
    cut to ``samples``."""
    n_seq = seq_k3.numel()
    worst = torch.argmax(torch.where(seq_count > 0, seq_k3 / seq_count.clamp_min(1.0), -1.0)).view(1)
    drawn = torch.randperm(n_seq, generator=torch.Generator().manual_seed(seed))[:samples]
    return torch.cat([worst, drawn.to(seq_k3.device)])


def _sample_rows(
    picked: torch.Tensor,
    segs: Segments,
    t: torch.Tensor,
    r: torch.Tensor,
    valid: torch.Tensor,
    ids: torch.Tensor | None,
    versions: torch.Tensor | None,
    prompts: torch.Tensor | None,
) -> torch.Tensor:
    """The picked sequences as ``[S, 4 + 4W]`` rows: index, length, version, prompt length, then
    trainer, rollout, valid and id per position, padded to the longest sequence ``W``."""
    f64 = torch.float64
    width = max(segs.width, 1)
    total = t.numel()
    offsets = torch.arange(width, device=t.device)
    if segs.packed:
        lengths = torch.bincount(segs.seq, minlength=segs.count)[picked]
    else:
        lengths = torch.full_like(picked, segs.width)
    flat = (segs.starts[picked][:, None] + offsets[None, :]).clamp_max(max(total - 1, 0))
    inside = offsets[None, :] < lengths[:, None]
    nan = torch.tensor(math.nan, dtype=f64, device=t.device)
    ok = inside & valid[flat]
    missing = torch.full((picked.numel(),), -1.0, dtype=f64, device=t.device)
    head = torch.stack(
        [
            picked.to(f64),
            lengths.to(f64),
            versions[picked].to(f64) if versions is not None else missing,
            prompts[picked].to(f64) if prompts is not None else missing,
        ],
        1,
    )
    id_rows = ids.reshape(-1)[flat].to(f64) if ids is not None else torch.zeros_like(flat, dtype=f64)
    body = [torch.where(ok, t[flat], nan), torch.where(ok, r[flat], nan), inside.to(f64), id_rows]
    return torch.cat([head, *body], 1)


def _unpack_sample(
    values: list[float], picked: torch.Tensor, samples: int, width: int, has_ids: bool
) -> list[dict[str, Any]]:
    width = max(width, 1)
    row_size = 4 + 4 * width
    out, seen = [], set()
    for i in range(picked.numel()):
        row = values[i * row_size : (i + 1) * row_size]
        index, length, version, prompt = (int(x) for x in row[:4])
        if index in seen or len(out) == samples:
            continue
        seen.add(index)
        body = row[4:]
        trainer, rollout, ids = (
            body[:length],
            body[width : width + length],
            body[3 * width : 3 * width + length],
        )
        out.append(
            {
                "seq_index": index,
                "reason": "largest_mismatch" if not out else "random",
                "token_ids": [int(x) for x in ids] if has_ids else None,
                "trainer_logprobs": trainer,
                "rollout_logprobs": rollout,
                "prompt_len": prompt if prompt >= 0 else None,
                "rollout_version": version if version >= 0 else None,
            }
        )
    return out
