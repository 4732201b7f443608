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
POSITION_BUCKETS = 4  # quarters of the longest response
# The token-level signatures are shape statistics (a slope, a share, bucket means): 2^16 tokens pin
# them to a few percent while bounding their cost: a 16M-token batch pays for 2^16, not 16M.
SAMPLE_TOKENS = 2**16
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


def token_sample(
    shape: torch.Size,
    t: torch.Tensor,
    r: torch.Tensor,
    valid: torch.Tensor,
    seq: torch.Tensor,
    pos: torch.Tensor,
    packed: bool,
) -> dict[str, torch.Tensor]:
    """At most about :data:`SAMPLE_TOKENS` tokens in whole rows, as ``[R, W]`` views of trainer
    (``t``), rollout (``r``), ``valid``, ``seq`` (sequence index) and ``pos`` (position in it), plus
    ``joined``: a token continues the sequence of the one before it.

    Padded input keeps every k-th row (GRPO groups sit in adjacent rows, so striding spans groups);
    packed input keeps its first tokens as one row.
    """
    if not packed:
        batch, width = shape
        stride = max(1, -(-batch * width // SAMPLE_TOKENS))
        rows = slice(None, None, stride)
        t2, r2, v2, s2, p2 = (x.view(batch, width)[rows] for x in (t, r, valid, seq, pos))
        joined = torch.ones_like(v2)
        joined[:, 0] = False
        return {"t": t2, "r": r2, "valid": v2, "seq": s2, "pos": p2, "joined": joined}
    keep = min(t.numel(), SAMPLE_TOKENS)
    joined = torch.zeros(keep, dtype=torch.bool, device=t.device)
    joined[1:] = seq[1:keep] == seq[: keep - 1]
    head = {"t": t, "r": r, "valid": valid, "seq": seq, "pos": pos}
    return {**{k: v[:keep].view(1, -1) for k, v in head.items()}, "joined": joined.view(1, -1)}


def signature_terms(
    *,
    t: torch.Tensor,
    r: torch.Tensor,
    valid: torch.Tensor,
    seq: torch.Tensor,
    pos: torch.Tensor,
    joined: torch.Tensor,
    n_seq: int,
    width: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The :data:`SIGNATURE_METRICS`, in order, as one float64 vector on the tensors' device.

    ``t``, ``r``, ``valid`` are the ``[R, W]`` token sample of :func:`token_sample` (raw: invalid
    tokens may hold NaN); ``seq`` their sequence index of ``n_seq`` and ``pos`` their position in it,
    quartered by ``width`` (the longest sequence); ``joined`` flags a token that follows another of
    its sequence. Also returns the sample's valid tokens and sum |d| per sequence
    (zero for sequences outside it), which the lag terms read. An empty bucket comes out NaN (0/0),
    which :func:`compute_mismatch` drops from the stats.
    """
    f64 = torch.float64
    zero = torch.zeros((), dtype=f64, device=t.device)
    t = torch.where(valid, t.to(f64), zero)
    r = torch.where(valid, r.to(f64), zero)
    v = valid.to(f64)
    n = v.sum()
    inv_n = 1.0 / n.clamp_min(1.0)
    d = t - r
    abs_d = d.abs()

    # Trainer on rollout: t = r + d, so cov(r, t) = var(r) + cov(r, d); computing the deviation from a
    # slope of 1 directly keeps its precision when d is 1e-7 and r is -5.
    mean_r = r.sum() * inv_n
    mean_d = d.sum() * inv_n
    var_r = (r * r).sum() * inv_n - mean_r * mean_r
    cov_rd = (r * d).sum() * inv_n - mean_r * mean_d
    var_d = (d * d).sum() * inv_n - mean_d * mean_d
    var_t = var_r + 2.0 * cov_rd + var_d
    cov_rt = var_r + cov_rd
    slope = 1.0 + cov_rd / var_r
    intercept = (mean_r + mean_d) - slope * mean_r
    # A constant side (all trainer logprobs 0, say) has no fit: NaN, which is dropped, not a rounding
    # residue blown up into a huge R².
    fit = (var_r > 0) & (var_t > 1e-12 * var_r)
    r2 = torch.where(fit, (cov_rt * cov_rt / (var_r * var_t)).clamp(0.0, 1.0), torch.nan)
    frac_neg = (d < 0).to(f64).sum() * inv_n
    frac_pos = (d > 0).to(f64).sum() * inv_n  # with frac_neg: the balance among tokens that differ

    # One code per valid token for (probability bucket, position quarter); invalid tokens go to a
    # last bucket that is dropped. Two bincounts give both marginals.
    edges = torch.tensor(PROB_EDGES, dtype=f64, device=t.device)
    prob_code = torch.bucketize(torch.exp(r), edges, right=True)
    quarter = (pos * POSITION_BUCKETS // max(width, 1)).clamp_max(POSITION_BUCKETS - 1)
    cells = len(PROB_BUCKETS) * POSITION_BUCKETS
    code = torch.where(valid, prob_code * POSITION_BUCKETS + quarter, cells).reshape(-1)
    abs_sum = torch.bincount(code, weights=abs_d.reshape(-1), minlength=cells + 1)[:cells]
    count = torch.bincount(code, minlength=cells + 1)[:cells].to(f64)
    abs_sum, count = abs_sum.view(len(PROB_BUCKETS), -1), count.view(len(PROB_BUCKETS), -1)
    by_prob = abs_sum.sum(1) / count.sum(1)
    by_pos = abs_sum.sum(0) / count.sum(0)

    # Per-sequence mean |d|: its spread, and Sarle's bimodality coefficient (> 5/9 suggests two modes).
    flat_seq = seq.reshape(-1)
    seq_count = torch.zeros(n_seq, dtype=f64, device=t.device).index_add_(0, flat_seq, v.reshape(-1))
    seq_abs = torch.zeros(n_seq, dtype=f64, device=t.device).index_add_(0, flat_seq, abs_d.reshape(-1))
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
    pair = valid[:, :-1] & valid[:, 1:] & joined[:, 1:]
    pair_f = pair.to(f64)
    pair_n = pair_f.sum()
    shift0 = (abs_d[:, :-1] * pair_f).sum() / pair_n
    shift_next = ((t[:, :-1] - r[:, 1:]).abs() * pair_f).sum() / pair_n
    shift_prev = ((t[:, 1:] - r[:, :-1]).abs() * pair_f).sum() / pair_n
    terms = torch.stack(
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
    return terms, seq_count, seq_abs


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
