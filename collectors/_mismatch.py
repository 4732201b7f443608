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

from collectors._tensors import as_mask, as_tensor, real_number, same_shape, segments, whole_number

DEFAULT_EPS = 0.2
DEFAULT_C = 2.0
DEFAULT_TOP_K = 16
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


@dataclass
class MismatchResult:
    stats: dict[str, float]
    histogram: list[dict[str, Any]] = field(default_factory=list)  # bin, lo, hi, count
    worst: list[dict[str, Any]] = field(default_factory=list)  # worst tokens by |log ratio|


def compute_mismatch(
    trainer_logprobs: Any,
    rollout_logprobs: Any,
    mask: Any = None,
    *,
    seq_lens: Any = None,
    token_ids: Any = None,
    eps: float = DEFAULT_EPS,
    C: float = DEFAULT_C,  # noqa: N803  (the name used in the literature)
    top_k: int = DEFAULT_TOP_K,
) -> MismatchResult:
    """All ``mismatch/*`` metrics for one step; see DESIGN.md for the formulas.

    Tokens where either logprob is NaN/Inf are left out of every statistic and counted in
    ``mismatch/n_nonfinite``. With no valid token, only the two counts are returned (no NaNs).
    ``ratio_std`` is the population standard deviation.
    """
    eps = real_number("eps", eps, low=0.0, high=1.0)
    C = real_number("C", C, low=1.0)  # noqa: N806
    top_k = whole_number("top_k", top_k)
    f64 = torch.float64
    trainer = as_tensor("trainer_logprobs", trainer_logprobs, list_dtype=f64, allow_bool=False)
    rollout = as_tensor(
        "rollout_logprobs", rollout_logprobs, trainer.device, list_dtype=f64, allow_bool=False
    )
    same_shape("rollout_logprobs", rollout, "trainer_logprobs", trainer)
    valid_in = as_mask(mask, trainer)
    seq, pos, n_seq = segments(trainer.shape, seq_lens, trainer.device)
    ids = None
    if token_ids is not None:
        ids = as_tensor("token_ids", token_ids, trainer.device, list_dtype=torch.int64, allow_bool=False)
        if ids.is_floating_point():
            # A float id (NaN, 1e30) cannot name a token; it would fail later, far from its cause.
            raise TypeError(f"token_ids must hold integers, got dtype {ids.dtype}")
        same_shape("token_ids", ids, "trainer_logprobs", trainer)
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

    host = torch.cat([stats, counts, *worst_cols]).cpu().tolist()  # the one host transfer

    values = dict(zip(_STATS, host[: len(_STATS)], strict=True))
    n_valid = values["mismatch/n_tokens"]
    if n_valid == 0:
        result = {"mismatch/n_tokens": 0.0, "mismatch/n_nonfinite": values["mismatch/n_nonfinite"]}
    else:
        result = {name: value for name, value in values.items() if not math.isnan(value)}
    offset = len(_STATS)
    bounds = (-math.inf, *HIST_EDGES, math.inf)
    histogram = [
        {"bin": i, "lo": bounds[i], "hi": bounds[i + 1], "count": int(c)}
        for i, c in enumerate(host[offset : offset + len(HIST_EDGES) + 1])
    ]
    offset += len(HIST_EDGES) + 1
    cols = [host[offset + j * k : offset + (j + 1) * k] for j in range(len(worst_cols))]
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
    return MismatchResult(result, histogram if n_valid else [], worst)
