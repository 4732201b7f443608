"""collectors.rl_stats against an independent float64 numpy reference (plain loops)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch

from logprobe.collectors import rl_stats, token_entropy

# Every name rl_stats returns when given everything (the README's list).
RL_KEYS = {
    "train/clip_frac",
    "train/ppo_kl",
    "train/kl_ref",
    "train/entropy",
    "reward/mean",
    "reward/std",
    "response/length_mean",
    "response/length_min",
    "response/length_max",
}

# --------------------------------------------------------------------------- the reference


def ref_policy(
    lp: np.ndarray,
    old: np.ndarray,
    adv: np.ndarray,
    mask: np.ndarray,
    eps: float = 0.2,
    eps_high: float | None = None,
) -> dict[str, float]:
    """verl's pg_clipfrac and k1 ppo_kl, token by token over the mask."""
    high = eps if eps_high is None else eps_high
    lp, old, mask = (np.asarray(x, dtype=np.float64).reshape(-1) for x in (lp, old, mask))
    adv = np.asarray(adv, dtype=np.float64)
    if adv.ndim == 1 and lp.size != adv.size:  # one advantage per sequence
        adv = np.repeat(adv, lp.size // adv.size)
    adv = adv.reshape(-1)
    n = clipped = 0
    kl = 0.0
    for i in range(lp.size):
        if not mask[i]:
            continue
        r = math.exp(lp[i] - old[i])
        r_clip = min(max(r, 1.0 - eps), 1.0 + high)
        n += 1
        clipped += (-adv[i] * r_clip) > (-adv[i] * r)
        kl += old[i] - lp[i]
    return {"train/clip_frac": clipped / max(n, 1), "train/ppo_kl": kl / max(n, 1)}


def ref_kl_ref(lp: np.ndarray, ref: np.ndarray, mask: np.ndarray) -> float:
    vals = [
        math.exp(b - a) - (b - a) - 1.0
        for a, b, k in zip(np.ravel(lp), np.ravel(ref), np.ravel(mask), strict=True)
        if k
    ]
    return float(np.mean(vals))


def ref_entropy(logits: np.ndarray) -> np.ndarray:
    """Entropy of softmax over the last axis in float64, row by row."""
    x = np.asarray(logits, dtype=np.float64)
    flat = x.reshape(-1, x.shape[-1])
    out = np.empty(flat.shape[0])
    for i, row in enumerate(flat):
        z = row - row.max()
        p = np.exp(z) / np.exp(z).sum()
        nz = p > 0
        out[i] = -np.sum(p[nz] * np.log(p[nz]))
    return out.reshape(x.shape[:-1])


def masked_mean(x: np.ndarray, mask: np.ndarray) -> float:
    return float(np.mean([v for v, k in zip(np.ravel(x), np.ravel(mask), strict=True) if k]))


def batch(seed: int, b: int = 4, t: int = 9, scale: float = 0.3):
    rng = np.random.default_rng(seed)
    old = np.log(rng.uniform(0.01, 1.0, (b, t)))
    lp = old + rng.normal(0, scale, (b, t))
    ref = lp + rng.normal(0, scale, (b, t))
    adv_tok = rng.normal(0, 1, (b, t))
    adv_seq = rng.normal(0, 1, b)
    lens = rng.integers(1, t + 1, b)
    mask = np.arange(t)[None, :] < lens[:, None]
    return {"lp": lp, "old": old, "ref": ref, "adv_tok": adv_tok, "adv_seq": adv_seq, "mask": mask}


def close(got: float, want: float, rtol: float = 1e-9, atol: float = 1e-12) -> bool:
    return math.isclose(got, want, rel_tol=rtol, abs_tol=atol)


# --------------------------------------------------------------------------- clip_frac, ppo_kl, kl_ref


def test_clip_frac_hand_built() -> None:
    # ratio, advantage -> clipped branch active? (reasoned by hand from -A*clip(r) > -A*r)
    cases = [
        (math.exp(0.5), +1.0, True),  # r = 1.65 > 1.2, A > 0: clip lowers the objective
        (math.exp(0.5), -1.0, False),
        (math.exp(-0.5), -1.0, True),  # r = 0.61 < 0.8, A < 0
        (math.exp(-0.5), +1.0, False),
        (1.0, +1.0, False),
        (math.exp(0.5), 0.0, False),  # A = 0: never
    ]
    old = torch.zeros(len(cases), dtype=torch.float64)
    lp = torch.tensor([math.log(r) for r, _, _ in cases], dtype=torch.float64)
    adv = torch.tensor([a for _, a, _ in cases], dtype=torch.float64)
    out = rl_stats(logprobs=lp, old_logprobs=old, advantages=adv)
    assert out["train/clip_frac"] == pytest.approx(2 / 6, rel=1e-12)
    assert out["train/ppo_kl"] == pytest.approx(-float(lp.mean()), rel=1e-12)


def test_asymmetric_clip_hand_built() -> None:
    # r = 1.25, A > 0: clipped with eps_high 0.2, not with eps_high 0.28 (DAPO clip-higher)
    lp = torch.tensor([math.log(1.25), math.log(0.75)], dtype=torch.float64)
    old = torch.zeros(2, dtype=torch.float64)
    adv = torch.tensor([1.0, -1.0], dtype=torch.float64)
    sym = rl_stats(logprobs=lp, old_logprobs=old, advantages=adv)
    asym = rl_stats(logprobs=lp, old_logprobs=old, advantages=adv, clip_eps_high=0.28)
    assert sym["train/clip_frac"] == 1.0
    assert asym["train/clip_frac"] == 0.5  # r = 0.75 < 0.8 with A < 0 is still clipped on the low side
    wide_low = rl_stats(logprobs=lp, old_logprobs=old, advantages=adv, clip_eps=0.3, clip_eps_high=0.2)
    assert wide_low["train/clip_frac"] == 0.5


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize(("eps", "eps_high"), [(0.2, None), (0.2, 0.28), (0.1, 0.3), (0.3, 0.05)])
def test_clip_frac_and_ppo_kl_per_token_advantages(seed: int, eps: float, eps_high: float | None) -> None:
    d = batch(seed)
    out = rl_stats(
        logprobs=torch.from_numpy(d["lp"]),
        old_logprobs=torch.from_numpy(d["old"]),
        advantages=torch.from_numpy(d["adv_tok"]),
        mask=torch.from_numpy(d["mask"]),
        clip_eps=eps,
        clip_eps_high=eps_high,
    )
    want = ref_policy(d["lp"], d["old"], d["adv_tok"], d["mask"], eps, eps_high)
    assert close(out["train/clip_frac"], want["train/clip_frac"])
    assert close(out["train/ppo_kl"], want["train/ppo_kl"])


@pytest.mark.parametrize("seed", range(6))
def test_per_sequence_advantages_broadcast(seed: int) -> None:
    d = batch(seed)
    out = rl_stats(logprobs=d["lp"], old_logprobs=d["old"], advantages=d["adv_seq"], mask=d["mask"])
    want = ref_policy(d["lp"], d["old"], d["adv_seq"], d["mask"])
    assert close(out["train/clip_frac"], want["train/clip_frac"])
    # same as giving the advantage on every token of the sequence
    per_tok = np.repeat(d["adv_seq"][:, None], d["lp"].shape[1], axis=1)
    out_tok = rl_stats(logprobs=d["lp"], old_logprobs=d["old"], advantages=per_tok, mask=d["mask"])
    assert out["train/clip_frac"] == out_tok["train/clip_frac"]


def test_per_sequence_advantages_are_not_transposed() -> None:
    # seq 0: r = 1.65 everywhere, seq 1: r = 0.61 everywhere. A = [+1, -1] clips all; [-1, +1] none.
    lp = torch.tensor([[0.5, 0.5, 0.5], [-0.5, -0.5, -0.5]], dtype=torch.float64)
    old = torch.zeros(2, 3, dtype=torch.float64)
    assert (
        rl_stats(logprobs=lp, old_logprobs=old, advantages=torch.tensor([1.0, -1.0]))["train/clip_frac"]
        == 1.0
    )
    assert (
        rl_stats(logprobs=lp, old_logprobs=old, advantages=torch.tensor([-1.0, 1.0]))["train/clip_frac"]
        == 0.0
    )


@pytest.mark.parametrize("seed", range(4))
def test_kl_ref(seed: int) -> None:
    d = batch(seed)
    out = rl_stats(logprobs=d["lp"], ref_logprobs=d["ref"], mask=d["mask"])
    assert close(out["train/kl_ref"], ref_kl_ref(d["lp"], d["ref"], d["mask"]))
    assert out["train/kl_ref"] >= 0
    assert "train/clip_frac" not in out  # no old_logprobs/advantages given


def test_kl_ref_hand_built() -> None:
    lp = torch.tensor([0.0, 0.0], dtype=torch.float64)
    ref = torch.tensor([math.log(2.0), 0.0], dtype=torch.float64)
    out = rl_stats(logprobs=lp, ref_logprobs=ref)
    assert out["train/kl_ref"] == pytest.approx((2.0 - math.log(2.0) - 1.0) / 2, rel=1e-12)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_low_precision_logprobs_match_reference_on_cast_values(dtype: torch.dtype) -> None:
    d = batch(8, scale=0.05)
    lp, old, ref = (torch.from_numpy(d[k]).to(dtype) for k in ("lp", "old", "ref"))
    out = rl_stats(logprobs=lp, old_logprobs=old, advantages=d["adv_tok"], ref_logprobs=ref, mask=d["mask"])
    lp64, old64, ref64 = (x.to(torch.float64).numpy() for x in (lp, old, ref))
    want = ref_policy(lp64, old64, d["adv_tok"], d["mask"])
    assert close(out["train/clip_frac"], want["train/clip_frac"])
    assert close(out["train/ppo_kl"], want["train/ppo_kl"])
    assert close(out["train/kl_ref"], ref_kl_ref(lp64, ref64, d["mask"]))


# --------------------------------------------------------------------------- entropy


def test_entropy_analytic_values() -> None:
    v = 7
    logits = torch.zeros(2, 3, v)
    logits[1, 2, 4] = 1000.0  # one-hot: entropy 0
    out = token_entropy(logits)
    assert out.shape == (2, 3)
    assert torch.allclose(out[0], torch.full((3,), math.log(v)), rtol=1e-6)
    assert abs(float(out[1, 2])) < 1e-6


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_entropy_from_logits_matches_numpy(seed: int, dtype: torch.dtype) -> None:
    rng = np.random.default_rng(seed)
    logits = torch.from_numpy(rng.normal(0, 3.0, (3, 5, 50))).to(dtype)
    mask = np.arange(5)[None, :] < np.array([5, 2, 3])[:, None]
    out = rl_stats(logits=logits, mask=torch.from_numpy(mask))
    per_token = ref_entropy(logits.to(torch.float64).numpy())
    # token_entropy works in float32: float32 tolerances
    assert out["train/entropy"] == pytest.approx(masked_mean(per_token, mask), rel=1e-5)
    np.testing.assert_allclose(token_entropy(logits).double().numpy(), per_token, rtol=1e-5, atol=1e-6)
    assert out["response/length_mean"] == pytest.approx(10 / 3)


@pytest.mark.parametrize("shape", [(4, 6, 33), (13, 17), (1, 1, 5)])
def test_entropy_chunk_sizes_agree(shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(1)
    logits = torch.from_numpy(rng.normal(0, 2.0, shape).astype(np.float32))
    results = [token_entropy(logits, chunk) for chunk in (1, 3, 10**6)]
    for r in results[1:]:
        torch.testing.assert_close(r, results[0], rtol=1e-6, atol=1e-6)
    stats = [rl_stats(logits=logits, entropy_chunk=chunk)["train/entropy"] for chunk in (1, 3, 10**6)]
    assert stats[1] == pytest.approx(stats[0], rel=1e-6)
    assert stats[2] == pytest.approx(stats[0], rel=1e-6)
    assert stats[0] == pytest.approx(float(ref_entropy(logits.numpy()).mean()), rel=1e-5)


@pytest.mark.parametrize("chunk", [0, -3])
def test_entropy_chunk_must_be_positive(chunk: int) -> None:
    with pytest.raises(ValueError, match="entropy_chunk"):
        rl_stats(logits=torch.zeros(2, 3, 4), entropy_chunk=chunk)


def test_entropy_given_per_token() -> None:
    ent = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = np.array([[1, 1, 0], [1, 0, 0]])
    out = rl_stats(entropy=torch.from_numpy(ent), mask=torch.from_numpy(mask))
    assert out["train/entropy"] == pytest.approx((1 + 2 + 4) / 3, rel=1e-12)
    assert out["response/length_mean"] == pytest.approx(1.5)
    # a given entropy wins over logits
    both = rl_stats(entropy=ent, logits=torch.zeros(2, 3, 4), mask=mask)
    assert both["train/entropy"] == pytest.approx((1 + 2 + 4) / 3, rel=1e-12)


def test_entropy_with_logprobs_and_mask() -> None:
    d = batch(3)
    rng = np.random.default_rng(3)
    logits = rng.normal(0, 1.0, (*d["lp"].shape, 11))
    out = rl_stats(logprobs=d["lp"], logits=torch.from_numpy(logits), mask=d["mask"])
    assert out["train/entropy"] == pytest.approx(masked_mean(ref_entropy(logits), d["mask"]), rel=1e-5)


# --------------------------------------------------------------------------- rewards and lengths


@pytest.mark.parametrize("kind", ["tensor", "numpy", "list"])
def test_rewards_mean_and_population_std(kind: str) -> None:
    rewards = [1.0, 0.0, 0.0, 1.0, 1.0, 0.5]
    value: Any = {"tensor": torch.tensor(rewards), "numpy": np.array(rewards), "list": rewards}[kind]
    out = rl_stats(rewards=value)
    assert out["reward/mean"] == pytest.approx(np.mean(rewards), rel=1e-7)
    assert out["reward/std"] == pytest.approx(np.std(rewards, ddof=0), rel=1e-7)
    assert set(out) == {"reward/mean", "reward/std"}


def test_single_reward_has_zero_std_and_empty_rewards_are_skipped() -> None:
    assert rl_stats(rewards=torch.tensor([0.7])) == pytest.approx({"reward/mean": 0.7, "reward/std": 0.0})
    assert rl_stats(rewards=torch.empty(0)) == {}
    assert rl_stats() == {}


def test_response_lengths_from_mask() -> None:
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]])
    out = rl_stats(logprobs=torch.zeros(3, 4), mask=mask)
    assert out["response/length_mean"] == pytest.approx(8 / 3)
    assert out["response/length_min"] == 1.0
    assert out["response/length_max"] == 4.0


def test_response_lengths_given_win_over_mask() -> None:
    lengths = [10, 3, 7, 12]
    out = rl_stats(logprobs=torch.zeros(2, 4), mask=torch.ones(2, 4), response_lengths=torch.tensor(lengths))
    assert out["response/length_mean"] == pytest.approx(np.mean(lengths))
    assert out["response/length_min"] == 3.0
    assert out["response/length_max"] == 12.0
    only = rl_stats(response_lengths=np.array(lengths))
    assert set(only) == {"response/length_mean", "response/length_min", "response/length_max"}


def test_no_lengths_for_packed_1d() -> None:
    out = rl_stats(logprobs=torch.zeros(6), mask=torch.ones(6))
    assert not any(k.startswith("response/") for k in out)


def test_everything_at_once_all_floats() -> None:
    d = batch(12)
    out = rl_stats(
        logprobs=d["lp"],
        old_logprobs=d["old"],
        advantages=d["adv_seq"],
        ref_logprobs=d["ref"],
        logits=np.random.default_rng(0).normal(size=(*d["lp"].shape, 5)),
        mask=d["mask"],
        rewards=d["adv_seq"],
    )
    assert set(out) == RL_KEYS
    assert all(type(v) is float for v in out.values())
    assert out["response/length_mean"] == pytest.approx(d["mask"].sum(axis=1).mean())


# --------------------------------------------------------------------------- shape errors


def _shape_error(**kwargs: Any) -> str:
    with pytest.raises(ValueError) as exc:
        rl_stats(**kwargs)
    return str(exc.value)


def test_old_logprobs_shape_mismatch() -> None:
    msg = _shape_error(logprobs=torch.zeros(2, 5), old_logprobs=torch.zeros(2, 4), advantages=torch.zeros(2))
    assert "(2, 5)" in msg and "(2, 4)" in msg and "old_logprobs" in msg


@pytest.mark.parametrize("adv_shape", [(3,), (2, 4), (5, 2), (2, 5, 1)])
def test_advantages_shape_mismatch(adv_shape: tuple[int, ...]) -> None:
    msg = _shape_error(
        logprobs=torch.zeros(2, 5), old_logprobs=torch.zeros(2, 5), advantages=torch.zeros(adv_shape)
    )
    assert str(adv_shape) in msg and "(2, 5)" in msg and "advantages" in msg


def test_ref_logprobs_shape_mismatch() -> None:
    msg = _shape_error(logprobs=torch.zeros(2, 5), ref_logprobs=torch.zeros(5, 2))
    assert "(2, 5)" in msg and "(5, 2)" in msg and "ref_logprobs" in msg


def test_mask_shape_mismatch() -> None:
    msg = _shape_error(logprobs=torch.zeros(2, 5), mask=torch.ones(2, 6))
    assert "(2, 5)" in msg and "(2, 6)" in msg and "mask" in msg
    msg = _shape_error(logits=torch.zeros(2, 5, 7), mask=torch.ones(3, 5))
    assert "(2, 5)" in msg and "(3, 5)" in msg


# ------------------------------------------------------------ regressions (bugs these tests found)


def test_padding_values_are_ignored() -> None:
    lp = torch.tensor([[-1.0, -0.5, -math.inf]], dtype=torch.float64)
    old = torch.tensor([[-1.2, -0.5, -math.inf]], dtype=torch.float64)
    ref = torch.tensor([[-1.1, -0.6, math.nan]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0]])
    out = rl_stats(logprobs=lp, old_logprobs=old, advantages=torch.ones(1), ref_logprobs=ref, mask=mask)
    assert out["train/ppo_kl"] == pytest.approx(((-1.2 + 1.0) + 0.0) / 2)
    assert math.isfinite(out["train/kl_ref"])


@pytest.mark.parametrize(
    "kwargs",
    [
        {"logprobs": torch.zeros(2, 3), "logits": torch.zeros(1, 3, 5)},
        {"logprobs": torch.zeros(2, 3), "entropy": torch.ones(3)},
    ],
)
def test_logits_and_entropy_shape_mismatch(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        rl_stats(**kwargs)


def test_all_zero_mask_leaves_token_level_means_out() -> None:
    lp = torch.full((2, 3), -1.0, dtype=torch.float64)
    stats = rl_stats(
        logprobs=lp,
        old_logprobs=lp,
        advantages=torch.ones(2),
        logits=torch.randn(2, 3, 5),
        mask=torch.zeros(2, 3),
        rewards=torch.tensor([1.0, 0.0]),
    )
    assert stats == {"reward/mean": 0.5, "reward/std": 0.5}
