"""compute_mismatch and Run.log_mismatch against an independent float64 numpy reference.

The reference below is written from docs/design.md's formulas ("Mismatch metrics (trainer side)") with a
plain loop over sequences and tokens, so that it is obviously right; it shares no code with
``collectors._mismatch``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from logprobe import collectors
from logprobe.collectors import HIST_EDGES, MISMATCH_METRICS, compute_mismatch
from logprobe.collectors._mismatch import PEARSON_MIN_SPREAD
from logprobe.storage import Store

EPS = 0.2
C = 2.0

# --------------------------------------------------------------------------- the reference


def ref_stats(seqs: list[tuple[np.ndarray, np.ndarray, np.ndarray]], eps: float = EPS, c: float = C) -> dict:
    """Every ``mismatch/*`` metric from docs/design.md, in float64.

    ``seqs`` holds one ``(lp_trainer, lp_rollout, mask)`` triple of 1-D arrays per sequence. Tokens
    where either logprob is NaN/Inf are excluded everywhere and counted. Metrics that are undefined
    (NaN, for example Pearson on constant probabilities) are left out; with no valid token only the
    two counts are returned.
    """
    d_all: list[float] = []
    p_t: list[float] = []
    p_r: list[float] = []
    seq_sums: list[float] = []
    seq_k3_means: list[float] = []
    n_nonfinite = 0
    for lt, lr, mk in seqs:
        d_seq: list[float] = []
        for a, b, keep in zip(lt, lr, mk, strict=True):
            if not keep:
                continue
            a, b = float(a), float(b)
            if not (math.isfinite(a) and math.isfinite(b)):
                n_nonfinite += 1
                continue
            d_seq.append(a - b)
            p_t.append(math.exp(a))
            p_r.append(math.exp(b))
        if d_seq:
            ds = np.asarray(d_seq, dtype=np.float64)
            seq_sums.append(float(ds.sum()))
            seq_k3_means.append(float(np.mean(np.exp(ds) - 1.0 - ds)))
        d_all.extend(d_seq)

    out: dict[str, float] = {
        "mismatch/n_tokens": float(len(d_all)),
        "mismatch/n_nonfinite": float(n_nonfinite),
    }
    if not d_all:
        return out
    d = np.asarray(d_all, dtype=np.float64)
    rho = np.exp(d)
    pt = np.asarray(p_t, dtype=np.float64)
    pr = np.asarray(p_r, dtype=np.float64)
    w = rho / rho.mean()
    with np.errstate(invalid="ignore", divide="ignore"):
        spread_ok = len(d) > 1 and float(np.std(pt) / np.mean(pt)) >= PEARSON_MIN_SPREAD
        pearson = float(np.corrcoef(pt, pr)[0, 1]) if spread_ok else math.nan
    out.update(
        {
            "mismatch/k1": float(np.mean(-d)),
            "mismatch/k2": float(np.mean(d**2 / 2.0)),
            "mismatch/k3": float(np.mean(rho - 1.0 - d)),
            "mismatch/abs_logp_diff_mean": float(np.mean(np.abs(d))),
            "mismatch/abs_logp_diff_max": float(np.max(np.abs(d))),
            "mismatch/abs_prob_diff_mean": float(np.mean(np.abs(pt - pr))),
            "mismatch/abs_prob_diff_max": float(np.max(np.abs(pt - pr))),
            "mismatch/prob_pearson": pearson,
            "mismatch/ratio_mean": float(np.mean(rho)),
            "mismatch/ratio_std": float(np.std(rho)),  # population (ddof=0)
            "mismatch/ratio_min": float(np.min(rho)),
            "mismatch/ratio_max": float(np.max(rho)),
            "mismatch/chi2": float(np.mean(rho**2) - 1.0),
            "mismatch/ess": float(1.0 / np.mean(w**2)),
            "mismatch/frac_outside_eps": float(np.mean((rho < 1.0 - eps) | (rho > 1.0 + eps))),
            "mismatch/frac_outside_C": float(np.mean((rho < 1.0 / c) | (rho > c))),
            "mismatch/seq_log_ratio_mean": float(np.mean(seq_sums)),
            "mismatch/seq_log_ratio_abs_max": float(np.max(np.abs(seq_sums))),
            "mismatch/seq_k3_max": float(np.max(seq_k3_means)),
        }
    )
    return {k: v for k, v in out.items() if not math.isnan(v)}


def ref_worst(
    seqs: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
    top_k: int,
    ids: list[np.ndarray] | None = None,
) -> list[dict]:
    """The ``top_k`` valid tokens with the largest |d|, largest first."""
    cands = []
    for s, (lt, lr, mk) in enumerate(seqs):
        for p in range(len(lt)):
            a, b = float(lt[p]), float(lr[p])
            if mk[p] and math.isfinite(a) and math.isfinite(b):
                tid = int(ids[s][p]) if ids is not None else None
                cands.append((abs(a - b), s, p, a, b, tid))
    cands.sort(key=lambda x: -x[0])
    return [
        {
            "seq_index": s,
            "position": p,
            "trainer_logprob": a,
            "rollout_logprob": b,
            "log_ratio": a - b,
            "token_id": tid,
        }
        for _, s, p, a, b, tid in cands[:top_k]
    ]


def ref_bin(x: float) -> int:
    """Index of the histogram bin (lo, hi] holding ``x``: (-inf, e0], (e0, e1], ..., (e_last, inf)."""
    bounds = [-math.inf, *HIST_EDGES, math.inf]
    for i in range(len(bounds) - 1):
        if bounds[i] < x <= bounds[i + 1]:
            return i
    raise AssertionError(f"no bin for {x}")


def ref_hist(seqs: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> list[int]:
    counts = [0] * (len(HIST_EDGES) + 1)
    for lt, lr, mk in seqs:
        for a, b, keep in zip(lt, lr, mk, strict=True):
            if keep and math.isfinite(float(a)) and math.isfinite(float(b)):
                counts[ref_bin(float(a) - float(b))] += 1
    return counts


# --------------------------------------------------------------------------- helpers


def padded_seqs(
    t: np.ndarray, r: np.ndarray, m: np.ndarray
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    t, r, m = (np.asarray(x) for x in (t, r, m))
    return [(t[i], r[i], m[i].astype(bool)) for i in range(t.shape[0])]


def packed_seqs(t: np.ndarray, r: np.ndarray, m: np.ndarray, lens: list[int]):
    out, start = [], 0
    for n in lens:
        out.append((t[start : start + n], r[start : start + n], np.asarray(m[start : start + n], dtype=bool)))
        start += n
    return out


def assert_stats_close(got: dict, want: dict, rtol: float = 1e-9, atol: float = 1e-12) -> None:
    # the signatures have their own reference in test_signatures.py
    got, want = ({k: v for k, v in x.items() if k.startswith("mismatch/")} for x in (got, want))
    assert set(got) == set(want), f"keys differ: extra {set(got) - set(want)}, missing {set(want) - set(got)}"
    for name, w in want.items():
        g = got[name]
        assert isinstance(g, float), (name, type(g))
        if name in ("mismatch/n_tokens", "mismatch/n_nonfinite") or math.isinf(w):
            assert g == w, (name, g, w)
        else:
            assert math.isclose(g, w, rel_tol=rtol, abs_tol=atol), (name, g, w)


def assert_worst_equal(got: list[dict], want: list[dict], rtol: float = 0.0) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g["seq_index"] == w["seq_index"]
        assert g["position"] == w["position"]
        assert g["token_id"] == w["token_id"]
        for key in ("trainer_logprob", "rollout_logprob", "log_ratio"):
            assert math.isclose(g[key], w[key], rel_tol=rtol, abs_tol=0.0), (key, g[key], w[key])


def ragged_batch(seed: int, lens=(7, 1, 0, 12, 5), width: int = 12, scale: float = 0.3, holes: bool = True):
    """Padded [B, T] float64 logprobs with a ragged mask, plus its packed 1-D twin.

    Padding holds garbage (NaN, +inf, huge numbers) that must be ignored. With ``holes`` some tokens
    inside a sequence are masked too (prompt tokens, say) and one sequence is entirely masked.
    """
    rng = np.random.default_rng(seed)
    b = len(lens)
    lr = np.log(rng.uniform(0.01, 1.0, size=(b, width)))
    d = rng.normal(0.0, scale, size=(b, width))
    d[rng.uniform(size=(b, width)) < 0.1] *= 8.0  # a few outliers beyond C
    lt = lr + d
    mask = np.zeros((b, width), dtype=bool)
    for i, n in enumerate(lens):
        mask[i, :n] = True
    if holes:
        mask[0, 2] = False
        mask[3, 0] = False
        mask[3, 7] = False
        mask[4, :] = False  # a sequence with tokens but none valid
    garbage = np.array([np.nan, np.inf, -np.inf, 1e30, -1e30])
    for i, n in enumerate(lens):
        lt[i, n:] = garbage[(np.arange(width - n) + i) % len(garbage)]
        lr[i, n:] = garbage[(np.arange(width - n) + i + 2) % len(garbage)]
    ids = rng.integers(0, 50_000, size=(b, width))
    packed_t = np.concatenate([lt[i, :n] for i, n in enumerate(lens)])
    packed_r = np.concatenate([lr[i, :n] for i, n in enumerate(lens)])
    packed_m = np.concatenate([mask[i, :n] for i, n in enumerate(lens)])
    packed_ids = np.concatenate([ids[i, :n] for i, n in enumerate(lens)])
    return {
        "t": lt,
        "r": lr,
        "m": mask,
        "ids": ids,
        "lens": list(lens),
        "pt": packed_t,
        "pr": packed_r,
        "pm": packed_m,
        "pids": packed_ids,
    }


# --------------------------------------------------------------------------- the reference itself


def test_reference_on_hand_computed_values() -> None:
    # Two tokens, d = +ln 2 and -ln 2: rho = 2 and 1/2, checked by hand, not by the code under test.
    ln2 = math.log(2.0)
    seqs = [(np.array([0.0, -ln2]), np.array([-ln2, 0.0]), np.array([True, True]))]
    s = ref_stats(seqs)
    assert s["mismatch/k1"] == pytest.approx(0.0, abs=1e-15)
    assert s["mismatch/k2"] == pytest.approx(ln2**2 / 2)
    assert s["mismatch/k3"] == pytest.approx(((2 - 1 - ln2) + (0.5 - 1 + ln2)) / 2)
    assert s["mismatch/ratio_mean"] == pytest.approx(1.25)
    assert s["mismatch/ratio_std"] == pytest.approx(0.75)
    assert s["mismatch/chi2"] == pytest.approx((4 + 0.25) / 2 - 1)
    assert s["mismatch/ess"] == pytest.approx(1.25**2 / 2.125)
    assert s["mismatch/abs_prob_diff_mean"] == pytest.approx(0.5)
    assert s["mismatch/prob_pearson"] == pytest.approx(-1.0)
    assert s["mismatch/frac_outside_eps"] == 1.0
    assert s["mismatch/frac_outside_C"] == 0.0  # exactly on the edges: strict inequality
    assert s["mismatch/seq_log_ratio_mean"] == pytest.approx(0.0, abs=1e-15)


# --------------------------------------------------------------------------- metrics


def test_hand_built_padded() -> None:
    ln2 = math.log(2.0)
    t = torch.tensor([[0.0, -ln2, -1.0, 99.0], [-0.5, -0.25, 7.0, 7.0]], dtype=torch.float64)
    r = torch.tensor([[-ln2, 0.0, -1.5, -3.0], [-0.5, -0.5, 1.0, 1.0]], dtype=torch.float64)
    m = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]], dtype=torch.bool)
    res = compute_mismatch(t, r, m)
    want = ref_stats(padded_seqs(t.numpy(), r.numpy(), m.numpy()))
    assert_stats_close(res.stats, want)
    assert res.stats["mismatch/n_tokens"] == 5.0
    # by hand: per-sequence sums of d are (ln2 - ln2 + 0.5) and (0 + 0.25)
    assert res.stats["mismatch/seq_log_ratio_mean"] == pytest.approx((0.5 + 0.25) / 2, rel=1e-12)
    assert res.stats["mismatch/seq_log_ratio_abs_max"] == pytest.approx(0.5, rel=1e-12)
    assert res.stats["mismatch/ratio_min"] == pytest.approx(0.5, rel=1e-12)
    assert res.stats["mismatch/ratio_max"] == pytest.approx(2.0, rel=1e-12)


def test_every_design_metric_is_reported() -> None:
    data = ragged_batch(0)
    res = compute_mismatch(data["t"], data["r"], data["m"])
    assert {k for k in res.stats if k.startswith("mismatch/")} == set(MISMATCH_METRICS)
    assert len(MISMATCH_METRICS) == 21


@pytest.mark.parametrize("seed", range(8))
def test_padded_ragged_matches_reference(seed: int) -> None:
    data = ragged_batch(seed)
    res = compute_mismatch(
        torch.from_numpy(data["t"]), torch.from_numpy(data["r"]), torch.from_numpy(data["m"])
    )
    assert_stats_close(res.stats, ref_stats(padded_seqs(data["t"], data["r"], data["m"])))


@pytest.mark.parametrize("seed", range(8))
def test_packed_matches_reference_and_padded(seed: int) -> None:
    data = ragged_batch(seed)
    padded = compute_mismatch(
        torch.from_numpy(data["t"]),
        torch.from_numpy(data["r"]),
        torch.from_numpy(data["m"]),
        token_ids=torch.from_numpy(data["ids"]),
        top_k=10,
    )
    packed = compute_mismatch(
        torch.from_numpy(data["pt"]),
        torch.from_numpy(data["pr"]),
        torch.from_numpy(data["pm"]),
        seq_lens=torch.tensor(data["lens"]),
        token_ids=torch.from_numpy(data["pids"]),
        top_k=10,
    )
    want = ref_stats(packed_seqs(data["pt"], data["pr"], data["pm"], data["lens"]))
    assert_stats_close(packed.stats, want)
    # same data, same stats (up to float64 summation order), same histogram, same worst tokens
    assert_stats_close(packed.stats, padded.stats, rtol=1e-12, atol=1e-15)
    assert packed.histogram == padded.histogram
    assert packed.worst == padded.worst


def test_packed_without_seq_lens_is_one_sequence() -> None:
    rng = np.random.default_rng(11)
    t = np.log(rng.uniform(0.05, 1, 20))
    r = t + rng.normal(0, 0.2, 20)
    res = compute_mismatch(t, r)
    want = ref_stats([(t, r, np.ones(20, dtype=bool))])
    assert_stats_close(res.stats, want)
    assert res.stats["mismatch/seq_log_ratio_abs_max"] == pytest.approx(abs(np.sum(t - r)), rel=1e-12)


def test_no_mask_means_every_token() -> None:
    data = ragged_batch(3, lens=(12, 12, 12), holes=False)
    res = compute_mismatch(data["t"], data["r"])
    assert_stats_close(res.stats, ref_stats(padded_seqs(data["t"], data["r"], np.ones_like(data["m"]))))


def test_custom_eps_and_c() -> None:
    data = ragged_batch(5)
    res = compute_mismatch(data["t"], data["r"], data["m"], eps=0.05, C=1.3)
    want = ref_stats(padded_seqs(data["t"], data["r"], data["m"]), eps=0.05, c=1.3)
    assert_stats_close(res.stats, want)
    default = compute_mismatch(data["t"], data["r"], data["m"])
    assert res.stats["mismatch/frac_outside_eps"] > default.stats["mismatch/frac_outside_eps"]


def test_frac_outside_is_strict_at_the_edges() -> None:
    # rho exactly 1 - eps, 1 + eps, 1/C, C (these exps are exact in float64) are inside.
    edges = [1 - EPS, 1 + EPS, 1 / C, C]
    assert [math.exp(math.log(x)) for x in edges] == edges
    t = torch.tensor([math.log(x) for x in edges] + [math.log(0.79), math.log(2.01)], dtype=torch.float64)
    r = torch.zeros_like(t)
    res = compute_mismatch(t, r)
    # rho = 0.8, 1.2, 0.5, 2.0, 0.79, 2.01: outside [0.8, 1.2] are 0.5, 2.0, 0.79, 2.01 -> 4 of 6;
    # outside [0.5, 2] is only 2.01 -> 1 of 6.
    assert res.stats["mismatch/frac_outside_eps"] == pytest.approx(4 / 6, rel=1e-12)
    assert res.stats["mismatch/frac_outside_C"] == pytest.approx(1 / 6, rel=1e-12)
    assert_stats_close(res.stats, ref_stats([(t.numpy(), r.numpy(), np.ones(6, dtype=bool))]))


def test_k3_precision_for_tiny_differences() -> None:
    # k3 = rho - 1 - d ~ d^2 / 2: must keep its precision when d ~ 1e-5 (float64 upcast).
    rng = np.random.default_rng(2)
    r = np.log(rng.uniform(0.1, 1.0, 1000)).astype(np.float32)
    t = (r + rng.normal(0, 1e-3, 1000)).astype(np.float32)
    res = compute_mismatch(torch.from_numpy(t), torch.from_numpy(r))
    d = t.astype(np.float64) - r.astype(np.float64)
    k3_series = np.mean(d**2 / 2 + d**3 / 6 + d**4 / 24)  # Taylor series, no cancellation
    assert res.stats["mismatch/k3"] == pytest.approx(k3_series, rel=1e-6)
    assert_stats_close(
        res.stats, ref_stats([(t.astype(np.float64), r.astype(np.float64), np.ones(1000, bool))])
    )


def test_single_token_leaves_out_undefined_pearson() -> None:
    res = compute_mismatch(torch.tensor([[-1.0, 0.0]]), torch.tensor([[-1.5, 0.0]]), torch.tensor([[1, 0]]))
    assert "mismatch/prob_pearson" not in res.stats
    assert res.stats["mismatch/n_tokens"] == 1.0
    assert res.stats["mismatch/ess"] == pytest.approx(1.0)
    assert res.stats["mismatch/ratio_std"] == 0.0
    assert all(math.isfinite(v) for v in res.stats.values())
    assert_stats_close(res.stats, ref_stats([(np.array([-1.0]), np.array([-1.5]), np.array([True]))]))


def test_pearson_is_left_out_of_a_collapsed_batch() -> None:
    """Every token at p ~ 0.9999 with engine rounding of 1e-6: the correlation of the two sides
    is noise (it came out 0.40 on a healthy vLLM run), so it is not reported; the mismatch itself
    still is. A batch with a real spread of probabilities keeps it, near 1, and so does a
    near-uniform policy over a large vocabulary, whose probabilities are all small but vary."""
    rng = np.random.default_rng(0)
    t = np.log(0.9999 - 1e-5 * rng.random((4, 64)))
    r = t + 1e-6 * rng.standard_normal(t.shape)
    res = compute_mismatch(torch.from_numpy(t), torch.from_numpy(r))
    assert float(np.std(np.exp(t)) / np.mean(np.exp(t))) < PEARSON_MIN_SPREAD
    assert "mismatch/prob_pearson" not in res.stats
    assert res.stats["mismatch/abs_logp_diff_mean"] == pytest.approx(np.mean(np.abs(t - r)), rel=1e-9)
    spread = np.log(rng.uniform(0.05, 1.0, (4, 64)))
    res = compute_mismatch(torch.from_numpy(spread), torch.from_numpy(spread + 1e-6))
    assert res.stats["mismatch/prob_pearson"] > 0.999999
    uniform = np.log(rng.uniform(0.5, 1.5, (4, 64)) / 50_000)  # std of p ~ 6e-6, 30% of its mean
    res = compute_mismatch(torch.from_numpy(uniform), torch.from_numpy(uniform + 1e-6))
    assert res.stats["mismatch/prob_pearson"] > 0.999999


# --------------------------------------------------------------------------- dtypes and input kinds


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
@pytest.mark.parametrize("layout", ["padded", "packed"])
def test_dtypes_match_reference_on_cast_values(dtype: torch.dtype, layout: str) -> None:
    data = ragged_batch(7, scale=0.05)
    if layout == "padded":
        t = torch.from_numpy(data["t"]).to(dtype)
        r = torch.from_numpy(data["r"]).to(dtype)
        m = torch.from_numpy(data["m"])
        kwargs: dict[str, Any] = {}
        seqs = padded_seqs(t.to(torch.float64).numpy(), r.to(torch.float64).numpy(), data["m"])
    else:
        t = torch.from_numpy(data["pt"]).to(dtype)
        r = torch.from_numpy(data["pr"]).to(dtype)
        m = torch.from_numpy(data["pm"])
        kwargs = {"seq_lens": data["lens"]}
        seqs = packed_seqs(t.to(torch.float64).numpy(), r.to(torch.float64).numpy(), data["pm"], data["lens"])
    res = compute_mismatch(t, r, m, top_k=8, **kwargs)
    want = ref_stats(seqs)
    assert_stats_close(res.stats, want, rtol=1e-9, atol=1e-12)
    assert [h["count"] for h in res.histogram] == ref_hist(seqs)
    # low-precision inputs produce ties in |d|: compare the multiset of |d| of the worst tokens
    got_abs = sorted(abs(w["log_ratio"]) for w in res.worst)
    want_abs = sorted(abs(w["log_ratio"]) for w in ref_worst(seqs, 8))
    assert got_abs == want_abs
    for w in res.worst:
        lt, lr, _ = seqs[w["seq_index"]]
        assert w["trainer_logprob"] == float(lt[w["position"]])
        assert w["rollout_logprob"] == float(lr[w["position"]])


def test_numpy_inputs() -> None:
    data = ragged_batch(4)
    want = ref_stats(padded_seqs(data["t"], data["r"], data["m"]))
    res = compute_mismatch(data["t"], data["r"], data["m"])  # float64 arrays, bool mask
    assert_stats_close(res.stats, want)
    res_int_mask = compute_mismatch(data["t"], data["r"], data["m"].astype(np.int64))
    assert_stats_close(res_int_mask.stats, want)
    t32, r32 = data["pt"].astype(np.float32), data["pr"].astype(np.float32)
    res32 = compute_mismatch(t32, r32, data["pm"], seq_lens=np.array(data["lens"], dtype=np.int32))
    want32 = ref_stats(packed_seqs(t32.astype(np.float64), r32.astype(np.float64), data["pm"], data["lens"]))
    assert_stats_close(res32.stats, want32)


def test_python_list_inputs_exact_in_float32() -> None:
    # Values exactly representable in float32 (multiples of 1/1024), so the comparison does not
    # depend on which float dtype a list becomes.
    rng = np.random.default_rng(9)
    lt = (np.round(np.log(rng.uniform(0.05, 1, (3, 6))) * 1024) / 1024).tolist()
    lr = (np.round((np.array(lt) + rng.normal(0, 0.2, (3, 6))) * 1024) / 1024).tolist()
    mask = [[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1], [1, 0, 0, 0, 0, 0]]
    res = compute_mismatch(lt, lr, mask)
    assert_stats_close(res.stats, ref_stats(padded_seqs(np.array(lt), np.array(lr), np.array(mask))))
    flat_t = [x for row, mk in zip(lt, mask, strict=True) for x, k in zip(row, mk, strict=True) if k]
    flat_r = [x for row, mk in zip(lr, mask, strict=True) for x, k in zip(row, mk, strict=True) if k]
    packed = compute_mismatch(flat_t, flat_r, seq_lens=[4, 6, 1])
    assert_stats_close(packed.stats, res.stats, rtol=1e-12, atol=1e-15)


def test_python_list_inputs_keep_float64_precision() -> None:
    lt = [-1.0, -2.0, -0.5, -0.1]
    lr = [-1.0 - 1e-4, -2.0 + 2e-4, -0.5 + 3e-5, -0.1 - 7e-5]
    res = compute_mismatch(lt, lr)
    want = ref_stats([(np.array(lt), np.array(lr), np.ones(4, dtype=bool))])
    assert_stats_close(res.stats, want, rtol=1e-9)


# --------------------------------------------------------------------------- NaN / Inf / empty


def test_nonfinite_tokens_are_excluded_and_counted() -> None:
    nan, inf = math.nan, math.inf
    t = torch.tensor([[-1.0, nan, -0.5, -2.0, inf], [-0.3, -0.2, -inf, -1.0, nan]], dtype=torch.float64)
    r = torch.tensor([[-1.1, -1.0, inf, -2.5, -1.0], [-0.1, nan, -1.0, -1.2, -1.0]], dtype=torch.float64)
    m = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]], dtype=torch.bool)  # the last NaN is padding
    res = compute_mismatch(t, r, m, top_k=100)
    # by hand: masked non-finite tokens are (0,1) (0,2) (0,4) (1,1) (1,2); (1,4) is masked out
    assert res.stats["mismatch/n_nonfinite"] == 5.0
    assert res.stats["mismatch/n_tokens"] == 4.0
    assert all(math.isfinite(v) for v in res.stats.values())
    assert_stats_close(res.stats, ref_stats(padded_seqs(t.numpy(), r.numpy(), m.numpy())))
    assert sum(h["count"] for h in res.histogram) == 4
    assert {(w["seq_index"], w["position"]) for w in res.worst} == {(0, 0), (0, 3), (1, 0), (1, 3)}


def test_all_nonfinite_returns_only_counts() -> None:
    t = torch.tensor([math.nan, -1.0, math.inf])
    r = torch.tensor([-1.0, -math.inf, -1.0])
    res = compute_mismatch(t, r)
    assert res.stats == {"mismatch/n_tokens": 0.0, "mismatch/n_nonfinite": 3.0}
    assert res.histogram == []
    assert res.worst == []


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_all_zero_mask(dtype: torch.dtype) -> None:
    t = torch.tensor([[-1.0, math.nan], [-0.5, -2.0]], dtype=dtype)
    r = torch.tensor([[-1.5, -1.0], [math.inf, -2.0]], dtype=dtype)
    res = compute_mismatch(
        t, r, torch.zeros(2, 2, dtype=torch.bool), token_ids=torch.ones(2, 2, dtype=torch.long)
    )
    assert res.stats == {"mismatch/n_tokens": 0.0, "mismatch/n_nonfinite": 0.0}
    assert not any(math.isnan(v) for v in res.stats.values())
    assert res.histogram == []
    assert res.worst == []


@pytest.mark.parametrize(
    ("t", "r", "kwargs"),
    [
        (torch.empty(0), torch.empty(0), {}),
        (torch.empty(0, dtype=torch.float64), torch.empty(0, dtype=torch.float64), {"seq_lens": [0, 0]}),
        ([], [], {}),
        (np.zeros(0), np.zeros(0), {}),
        (torch.empty(3, 0), torch.empty(3, 0), {"mask": torch.empty(3, 0, dtype=torch.bool)}),
        (torch.empty(0, 5), torch.empty(0, 5), {}),
    ],
)
def test_empty_input(t: Any, r: Any, kwargs: dict) -> None:
    res = compute_mismatch(t, r, **kwargs)
    assert res.stats == {"mismatch/n_tokens": 0.0, "mismatch/n_nonfinite": 0.0}
    assert res.histogram == []
    assert res.worst == []


# --------------------------------------------------------------------------- bad input


def test_shape_mismatch_names_both_shapes() -> None:
    with pytest.raises(ValueError, match="shape") as exc:
        compute_mismatch(torch.zeros(2, 4), torch.zeros(2, 3))
    assert "(2, 4)" in str(exc.value)
    assert "(2, 3)" in str(exc.value)


def test_mask_shape_mismatch() -> None:
    with pytest.raises(ValueError) as exc:
        compute_mismatch(torch.zeros(2, 4), torch.zeros(2, 4), torch.ones(4, 2, dtype=torch.bool))
    assert "(4, 2)" in str(exc.value)
    assert "(2, 4)" in str(exc.value)
    assert "mask" in str(exc.value)


def test_token_ids_shape_mismatch() -> None:
    with pytest.raises(ValueError) as exc:
        compute_mismatch(torch.zeros(2, 4), torch.zeros(2, 4), token_ids=torch.zeros(2, 5, dtype=torch.long))
    assert "(2, 5)" in str(exc.value)
    assert "(2, 4)" in str(exc.value)


@pytest.mark.parametrize("seq_lens", [[3, 3], [3, 6], [], [9, -1], [2, 2, 2, 1]])
def test_bad_seq_lens(seq_lens: list[int]) -> None:
    with pytest.raises(ValueError, match="seq_lens"):
        compute_mismatch(torch.zeros(8), torch.zeros(8), seq_lens=seq_lens)


@pytest.mark.parametrize("seq_lens", [torch.tensor([4.0, 4.0]), torch.tensor([[4, 4]]), np.array([[8]])])
def test_seq_lens_must_be_1d_integers(seq_lens: Any) -> None:
    with pytest.raises(ValueError, match="seq_lens"):
        compute_mismatch(torch.zeros(8), torch.zeros(8), seq_lens=seq_lens)


def test_seq_lens_with_padded_input() -> None:
    with pytest.raises(ValueError, match="seq_lens"):
        compute_mismatch(torch.zeros(2, 4), torch.zeros(2, 4), seq_lens=[4, 4])


@pytest.mark.parametrize("shape", [(2, 3, 4), (1, 1, 1, 1), ()])
def test_wrong_number_of_dimensions(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="dimensions"):
        compute_mismatch(torch.zeros(shape), torch.zeros(shape))


@pytest.mark.parametrize(
    ("kwargs", "word"), [({"eps": 0.0}, "eps"), ({"eps": 1.0}, "eps"), ({"C": 1.0}, "C")]
)
def test_bad_eps_and_c(kwargs: dict, word: str) -> None:
    with pytest.raises(ValueError, match=word):
        compute_mismatch(torch.zeros(3), torch.zeros(3), **kwargs)


@pytest.mark.parametrize(
    ("t", "r"),
    [
        (torch.zeros(3, dtype=torch.bool), torch.zeros(3)),
        (torch.zeros(3), torch.zeros(3, dtype=torch.complex64)),
        ("abc", torch.zeros(3)),
        (torch.zeros(3), object()),
    ],
)
def test_non_numeric_input_is_type_error(t: Any, r: Any) -> None:
    with pytest.raises(TypeError):
        compute_mismatch(t, r)


# --------------------------------------------------------------------------- histogram


def test_hist_edges_are_fixed_sorted_and_symmetric() -> None:
    edges = list(HIST_EDGES)
    assert edges == sorted(edges)
    assert len(set(edges)) == len(edges)
    assert edges == [-e for e in reversed(edges)]
    assert -1e-6 in edges and 1e-6 in edges and 0.0 not in edges


def test_histogram_bins_lo_hi_exclusive_inclusive() -> None:
    # rollout logprob 0 so d equals the trainer logprob exactly, including values right on an edge.
    ds = [0.0, 5e-7, -5e-7, 1e-6, -1e-6, 2e-5, 1e-3, -1e-3, 0.5, -0.5, 3.0, -3.0, 20.0, -20.0, -10.0, 10.0]
    ds += list(HIST_EDGES)
    t = torch.tensor(ds, dtype=torch.float64)
    r = torch.zeros_like(t)
    res = compute_mismatch(t, r)
    assert len(res.histogram) == len(HIST_EDGES) + 1
    bounds = [-math.inf, *HIST_EDGES, math.inf]
    for i, row in enumerate(res.histogram):
        assert row["bin"] == i
        assert row["lo"] == bounds[i]
        assert row["hi"] == bounds[i + 1]
        assert isinstance(row["count"], int)
    want = [0] * (len(HIST_EDGES) + 1)
    for x in ds:
        want[ref_bin(x)] += 1
    assert [row["count"] for row in res.histogram] == want
    assert sum(want) == res.stats["mismatch/n_tokens"] == len(ds)
    # spot checks by hand: d == 0 is in the centre bin (-1e-6, 1e-6]; d == 1e-6 too; d == -1e-6 is not
    centre = next(row for row in res.histogram if row["lo"] == -1e-6)
    assert centre["hi"] == 1e-6
    assert centre["count"] == ds.count(0.0) + ds.count(5e-7) + ds.count(-5e-7) + ds.count(1e-6)


@pytest.mark.parametrize("seed", range(4))
def test_histogram_random_counts(seed: int) -> None:
    data = ragged_batch(seed, scale=1.0)
    res = compute_mismatch(data["t"], data["r"], data["m"])
    seqs = padded_seqs(data["t"], data["r"], data["m"])
    assert [h["count"] for h in res.histogram] == ref_hist(seqs)
    assert sum(h["count"] for h in res.histogram) == res.stats["mismatch/n_tokens"]


# --------------------------------------------------------------------------- worst tokens


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("top_k", [1, 5, 16, 1000])
def test_worst_tokens_padded_and_packed(seed: int, top_k: int) -> None:
    data = ragged_batch(seed)
    padded = compute_mismatch(data["t"], data["r"], data["m"], token_ids=data["ids"], top_k=top_k)
    want = ref_worst(padded_seqs(data["t"], data["r"], data["m"]), top_k, ids=list(data["ids"]))
    assert_worst_equal(padded.worst, want)
    packed = compute_mismatch(
        data["pt"], data["pr"], data["pm"], seq_lens=data["lens"], token_ids=data["pids"], top_k=top_k
    )
    pseqs = packed_seqs(data["pt"], data["pr"], data["pm"], data["lens"])
    pids = [data["pids"][s - n : s] for s, n in zip(np.cumsum(data["lens"]), data["lens"], strict=True)]
    assert_worst_equal(packed.worst, ref_worst(pseqs, top_k, ids=pids))
    n_valid = int(padded.stats["mismatch/n_tokens"])
    assert len(padded.worst) == min(top_k, n_valid)
    for w in padded.worst:
        assert data["m"][w["seq_index"], w["position"]]  # only valid tokens
        assert w["token_id"] == data["ids"][w["seq_index"], w["position"]]
    mags = [abs(w["log_ratio"]) for w in padded.worst]
    assert mags == sorted(mags, reverse=True)


def test_worst_tokens_hand_built() -> None:
    t = torch.tensor([[-1.0, -1.0, -1.0, 0.0], [-1.0, -1.0, -1.0, -1.0]], dtype=torch.float64)
    r = torch.tensor([[-1.1, -3.0, -0.5, -9.0], [-1.0, -1.7, math.nan, -1.01]], dtype=torch.float64)
    m = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    ids = torch.tensor([[10, 11, 12, 13], [20, 21, 22, 23]])
    res = compute_mismatch(t, r, m, token_ids=ids, top_k=3)
    # |d|: (0,1)=2.0, (1,1)=0.7, (0,2)=0.5, (0,0)=0.1, ... ; (0,3) is masked, (1,2) is NaN
    assert [(w["seq_index"], w["position"], w["token_id"]) for w in res.worst] == [
        (0, 1, 11),
        (1, 1, 21),
        (0, 2, 12),
    ]
    assert res.worst[0]["log_ratio"] == pytest.approx(2.0)
    assert res.worst[2]["log_ratio"] == pytest.approx(-0.5)
    without_ids = compute_mismatch(t, r, m, top_k=3)
    assert [w["token_id"] for w in without_ids.worst] == [None, None, None]


@pytest.mark.parametrize("top_k", [0, -1])
def test_top_k_zero_gives_no_worst_tokens(top_k: int) -> None:
    t = torch.tensor([-1.0, -2.0], dtype=torch.float64)
    res = compute_mismatch(t, t - 0.1, top_k=top_k)
    assert res.worst == []
    assert res.stats["mismatch/n_tokens"] == 2.0


def test_worst_tokens_packed_positions_hand_built() -> None:
    t = torch.tensor([-1.0, -1.0, -1.0, -1.0, -1.0, -1.0], dtype=torch.float64)
    r = torch.tensor([-1.0, -1.0, -1.0, -2.0, -1.0, -1.5], dtype=torch.float64)
    res = compute_mismatch(t, r, seq_lens=[2, 0, 3, 1], token_ids=[5, 6, 7, 8, 9, 10], top_k=2)
    # the packed index 3 is sequence 2 position 1; index 5 is sequence 3 position 0
    assert [(w["seq_index"], w["position"], w["token_id"]) for w in res.worst] == [(2, 1, 8), (3, 0, 10)]


# --------------------------------------------------------------------------- Run.log_mismatch end to end


class TinyTokenizer:
    """The user's tokenizer: anything with ``decode(list_of_ids) -> str``."""

    def __init__(self) -> None:
        self.calls: list[Any] = []

    def decode(self, ids: list[int]) -> str:
        self.calls.append(ids)
        assert isinstance(ids, list)
        return "".join(f"<{i}>" for i in ids)


class BrokenTokenizer:
    def decode(self, ids: list[int]) -> str:
        raise KeyError(ids[0])


def _rows(store: Store, query: str) -> list[dict]:
    return store.sql(query).to_pylist()


def test_log_mismatch_end_to_end(tmp_path: Path) -> None:
    data = ragged_batch(21)
    t, r, m = data["t"].copy(), data["r"].copy(), data["m"].copy()
    t[0, 1] = math.nan  # two non-finite tokens inside the mask
    r[3, 4] = -math.inf
    tok = TinyTokenizer()
    run = collectors.init(run_id="r1", root=tmp_path, flush_interval=0.05)
    returned = run.log_mismatch(
        3,
        torch.from_numpy(t),
        torch.from_numpy(r),
        torch.from_numpy(m),
        token_ids=torch.from_numpy(data["ids"]),
        tokenizer=tok,
        policy_version=7,
        top_k=5,
    )
    run.close()

    seqs = padded_seqs(t, r, m)
    want = ref_stats(seqs)
    assert want["mismatch/n_nonfinite"] == 2.0
    assert_stats_close(returned, want)

    store = Store(tmp_path)
    metrics = _rows(store, "SELECT name, value, step, policy_version FROM metrics WHERE run_id = 'r1'")
    assert {row["step"] for row in metrics} == {3}
    assert {row["policy_version"] for row in metrics} == {7}
    stored = {row["name"]: row["value"] for row in metrics}
    assert len(stored) == len(metrics)
    assert_stats_close(stored, want)

    hist = _rows(
        store, "SELECT step, name, bin, lo, hi, count FROM histograms WHERE run_id = 'r1' ORDER BY bin"
    )
    bounds = [-math.inf, *HIST_EDGES, math.inf]
    assert [h["bin"] for h in hist] == list(range(len(HIST_EDGES) + 1))
    assert {h["step"] for h in hist} == {3}
    assert {h["name"] for h in hist} == {"log_ratio"}
    assert [h["lo"] for h in hist] == bounds[:-1]
    assert [h["hi"] for h in hist] == bounds[1:]
    assert [h["count"] for h in hist] == ref_hist(seqs)
    assert sum(h["count"] for h in hist) == want["mismatch/n_tokens"]

    tokens = _rows(
        store,
        "SELECT step, seq_index, position, token_id, token_text, trainer_logprob, rollout_logprob, log_ratio "
        "FROM tokens WHERE run_id = 'r1' ORDER BY abs(log_ratio) DESC",
    )
    expected = ref_worst(seqs, 5, ids=list(data["ids"]))
    assert len(tokens) == 5
    for got, exp in zip(tokens, expected, strict=True):
        assert got["step"] == 3
        assert (got["seq_index"], got["position"], got["token_id"]) == (
            exp["seq_index"],
            exp["position"],
            exp["token_id"],
        )
        assert got["token_text"] == f"<{exp['token_id']}>"
        assert got["trainer_logprob"] == exp["trainer_logprob"]
        assert got["rollout_logprob"] == exp["rollout_logprob"]
        assert got["log_ratio"] == pytest.approx(exp["log_ratio"], rel=1e-15)
    assert sorted(c[0] for c in tok.calls) == sorted(e["token_id"] for e in expected)

    events = _rows(store, "SELECT step, kind, payload FROM events WHERE run_id = 'r1' AND kind = 'nonfinite'")
    assert len(events) == 1
    assert events[0]["step"] == 3
    payload = json.loads(events[0]["payload"])
    assert payload["tokens"] == 2


def test_log_mismatch_packed_without_tokenizer_and_no_nonfinite(tmp_path: Path) -> None:
    data = ragged_batch(22)
    with collectors.init(run_id="r2", root=tmp_path, flush_interval=0.05) as run:
        run.log_mismatch(0, data["pt"], data["pr"], data["pm"], seq_lens=data["lens"], top_k=3)
        run.log_mismatch(
            1,
            data["pt"],
            data["pr"],
            data["pm"],
            seq_lens=data["lens"],
            token_ids=data["pids"],
            tokenizer=BrokenTokenizer(),
            top_k=3,
        )
    store = Store(tmp_path)
    seqs = packed_seqs(data["pt"], data["pr"], data["pm"], data["lens"])
    want = ref_stats(seqs)
    for step in (0, 1):
        rows = _rows(store, f"SELECT name, value FROM metrics WHERE run_id = 'r2' AND step = {step}")
        assert_stats_close({row["name"]: row["value"] for row in rows}, want)
    tokens = _rows(
        store,
        "SELECT step, seq_index, position, token_id, token_text FROM tokens "
        "WHERE run_id = 'r2' ORDER BY step, abs(log_ratio) DESC",
    )
    expected = ref_worst(seqs, 3)
    assert [(x["seq_index"], x["position"]) for x in tokens if x["step"] == 0] == [
        (e["seq_index"], e["position"]) for e in expected
    ]
    assert all(x["token_id"] is None and x["token_text"] is None for x in tokens if x["step"] == 0)
    step1 = [x for x in tokens if x["step"] == 1]
    assert len(step1) == 3
    assert all(x["token_id"] is not None and x["token_text"] is None for x in step1)  # decode failed: kept
    assert _rows(store, "SELECT * FROM events WHERE run_id = 'r2' AND kind = 'nonfinite'") == []


def test_log_mismatch_all_masked_logs_counts_only(tmp_path: Path) -> None:
    with collectors.init(run_id="r3", root=tmp_path, flush_interval=0.05) as run:
        out = run.log_mismatch(5, torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.bool))
    assert out == {"mismatch/n_tokens": 0.0, "mismatch/n_nonfinite": 0.0}
    store = Store(tmp_path)
    rows = _rows(store, "SELECT name, value FROM metrics WHERE run_id = 'r3'")
    assert {row["name"]: row["value"] for row in rows} == out
    assert _rows(store, "SELECT * FROM histograms WHERE run_id = 'r3'") == []
    assert _rows(store, "SELECT * FROM tokens WHERE run_id = 'r3'") == []


def test_log_mismatch_bad_input_raises_before_logging(tmp_path: Path) -> None:
    with collectors.init(run_id="r4", root=tmp_path, flush_interval=0.05) as run:
        with pytest.raises(ValueError):
            run.log_mismatch(1, torch.zeros(2, 3), torch.zeros(3, 2))
        with pytest.raises(ValueError):
            run.log_mismatch(2, torch.zeros(5), torch.zeros(5), seq_lens=[2, 2])
    store = Store(tmp_path)
    for table in ("metrics", "histograms", "tokens"):
        assert _rows(store, f"SELECT * FROM {table} WHERE run_id = 'r4'") == []
