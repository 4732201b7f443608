"""The shape of a step's mismatch: the numbers that tell one cause from another.

A level (``abs_logp_diff_mean``) says that trainer and engine disagree; these say how, which is what
names the cause (``monitor``'s cause library reads them):

- the regression of trainer on rollout logprob: reporting raw logprobs while sampling at
  temperature T makes the trainer's logprob roughly the rollout's times 1/T (slope far from 1, tight
  fit); every other cause leaves the slope at 1;
- sign balance: renormalising after top-p/top-k lifts the rollout logprob on almost every token by
  about log(1/kept mass), so nearly all d = trainer - rollout are negative; noise is half and half;
- |d| by rollout-probability bucket (the low-probability tail) and by relative response position
  (an update landing mid-batch splits a response into two policies; a stale prefix cache touches
  every token that attends to the cached prompt);
- |d| by policy lag, when the rollout's policy versions are passed;
- dispersion across sequences: a batch that mixes two policies is bimodal in per-sequence |d|;
- alignment: |d| with the two sequences offset by +-1 against offset 0 (an off-by-one in the
  plumbing agrees better shifted), and token-id disagreement when both sides pass ids.

Everything is a handful of extra reductions over tensors :func:`compute_mismatch` already holds, stacked
into the same vector it moves to the host once; nothing here syncs.
"""

from __future__ import annotations

import torch

# p_rollout bucket edges: the low-probability tail, the middle, the near-certain tokens.
PROB_EDGES = (0.1, 0.9)
PROB_BUCKETS = ("low", "mid", "high")
POSITION_BUCKETS = 4  # quarters of each response
SIGNATURE_METRICS = (
    "signature/slope",
    "signature/intercept",
    "signature/r2",
    "signature/d_mean",
    "signature/frac_neg",
    "signature/frac_pos",
    *(f"signature/abs_d_prob_{b}" for b in PROB_BUCKETS),
    *(f"signature/abs_d_pos_q{i + 1}" for i in range(POSITION_BUCKETS)),
    "signature/seq_abs_d_cv",
    "signature/seq_bimodality",
    "signature/align_shift0",
    "signature/align_shift_next",
    "signature/align_shift_prev",
)
TOKEN_ID_METRIC = "signature/token_id_mismatch_frac"
LAG_METRICS = ("signature/lag_mean", "signature/lag_max", "signature/abs_d_lag0", "signature/abs_d_lagged")


def signature_terms(
    *,
    t: torch.Tensor,
    r: torch.Tensor,
    d: torch.Tensor,
    abs_d: torch.Tensor,
    p_r: torch.Tensor,
    valid: torch.Tensor,
    v: torch.Tensor,
    n: torch.Tensor,
    seq: torch.Tensor,
    pos: torch.Tensor,
    seq_count: torch.Tensor,
    seq_abs: torch.Tensor,
) -> torch.Tensor:
    """The :data:`SIGNATURE_METRICS`, in order, as one float64 vector on the tensors' device.

    ``d``, ``abs_d`` and ``p_r`` are zero where a token is not ``valid``; ``t`` and ``r`` are raw.
    An empty bucket comes out NaN (0/0), which :func:`compute_mismatch` drops from the stats.
    """
    f64 = torch.float64
    inv_n = 1.0 / n.clamp_min(1.0)
    zero = torch.zeros((), dtype=f64, device=t.device)

    # Trainer on rollout: t = r + d, so cov(r, t) = var(r) + cov(r, d); computing the deviation from a
    # slope of 1 directly keeps its precision when d is 1e-7 and r is -5.
    r_valid = torch.where(valid, r, zero)
    mean_r = r_valid.sum() * inv_n
    mean_d = d.sum() * inv_n
    centred_r = (r_valid - mean_r) * v
    var_r = (centred_r * centred_r).sum() * inv_n
    cov_rd = (centred_r * d).sum() * inv_n
    var_d = (d * d).sum() * inv_n - mean_d * mean_d
    var_t = var_r + 2.0 * cov_rd + var_d
    cov_rt = var_r + cov_rd
    slope = 1.0 + cov_rd / var_r
    intercept = (mean_r + mean_d) - slope * mean_r
    r2 = cov_rt * cov_rt / (var_r * var_t)
    frac_neg = (d < 0).to(f64).sum() * inv_n
    frac_pos = (d > 0).to(f64).sum() * inv_n  # with frac_neg: the balance among tokens that differ

    # One code per valid token for (probability bucket, position quarter); invalid tokens go to a
    # last bucket that is dropped. Two bincounts give both marginals.
    prob_code = (p_r >= PROB_EDGES[0]).to(torch.int64) + (p_r >= PROB_EDGES[1]).to(torch.int64)
    length = seq_count[seq].clamp_min(1.0)
    quarter = (pos.to(f64) * POSITION_BUCKETS / length).floor().clamp(0, POSITION_BUCKETS - 1).to(torch.int64)
    cells = len(PROB_BUCKETS) * POSITION_BUCKETS
    code = torch.where(valid, prob_code * POSITION_BUCKETS + quarter, cells)
    abs_sum = torch.bincount(code, weights=abs_d, minlength=cells + 1)[:cells].view(len(PROB_BUCKETS), -1)
    count = torch.bincount(code, minlength=cells + 1)[:cells].to(f64).view(len(PROB_BUCKETS), -1)
    by_prob = abs_sum.sum(1) / count.sum(1)
    by_pos = abs_sum.sum(0) / count.sum(0)

    # Per-sequence mean |d|: its spread, and Sarle's bimodality coefficient (> 5/9 suggests two modes).
    has = seq_count > 0
    seq_mean = torch.where(has, seq_abs / seq_count.clamp_min(1.0), zero)
    w = has.to(f64)
    n_seq = w.sum().clamp_min(1.0)
    mu = (seq_mean * w).sum() / n_seq
    dev = (seq_mean - mu) * w
    m2 = (dev**2).sum() / n_seq
    m3 = (dev**3).sum() / n_seq
    m4 = (dev**4).sum() / n_seq
    cv = m2.sqrt() / mu
    bimodality = (m3 * m3 / (m2**3) + 1.0) / (m4 / (m2 * m2))

    # Alignment over adjacent valid pairs of one sequence: offset 0 against +-1 on the same pairs.
    pair = valid[:-1] & valid[1:] & (seq[:-1] == seq[1:])
    pair_n = pair.to(f64).sum()
    shift0 = torch.where(pair, abs_d[:-1], zero).sum() / pair_n
    shift_next = torch.where(pair, (t[:-1] - r[1:]).abs(), zero).sum() / pair_n
    shift_prev = torch.where(pair, (t[1:] - r[:-1]).abs(), zero).sum() / pair_n
    return torch.stack(
        [
            slope,
            intercept,
            r2,
            mean_d,
            frac_neg,
            frac_pos,
            *by_prob.unbind(),
            *by_pos.unbind(),
            cv,
            bimodality,
            shift0,
            shift_next,
            shift_prev,
        ]
    )


def token_id_term(
    ids: torch.Tensor, rollout_ids: torch.Tensor, valid: torch.Tensor, n: torch.Tensor
) -> torch.Tensor:
    """The fraction of valid tokens whose ids differ between trainer and rollout (retokenisation)."""
    differ = (ids.reshape(-1) != rollout_ids.reshape(-1)) & valid
    return (differ.to(torch.float64).sum() / n.clamp_min(1.0)).view(1)


def lag_terms(lag: torch.Tensor, seq_count: torch.Tensor, seq_abs: torch.Tensor) -> torch.Tensor:
    """Policy lag per sequence (trainer's version minus the rollout's): mean and max over sequences
    with tokens, and mean |d| of the tokens in lag-0 sequences against lagged ones."""
    f64 = torch.float64
    lag = lag.to(f64)
    has = seq_count > 0
    w = has.to(f64)
    zero = torch.zeros((), dtype=f64, device=lag.device)
    fresh = has & (lag <= 0)
    stale = has & (lag > 0)
    return torch.stack(
        [
            (lag * w).sum() / w.sum().clamp_min(1.0),
            torch.where(has, lag, torch.full_like(lag, -torch.inf)).max(),
            torch.where(fresh, seq_abs, zero).sum() / torch.where(fresh, seq_count, zero).sum(),
            torch.where(stale, seq_abs, zero).sum() / torch.where(stale, seq_count, zero).sum(),
        ]
    )
