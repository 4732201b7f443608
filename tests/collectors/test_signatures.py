"""The ``signature/*`` metrics and the sampled sequences, against numpy on hand-built batches."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from logprobe import collectors
from logprobe.collectors import compute_mismatch
from logprobe.collectors._signatures import SAMPLE_TOKENS
from logprobe.storage import Store


def _batch(seed: int = 0, b: int = 24, t: int = 10) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return -torch.rand(b, t, generator=gen, dtype=torch.float64) * 4 - 0.01


def test_regression_and_sign_balance_match_numpy() -> None:
    trainer = _batch()
    rollout = trainer * 0.7 + 0.05 * torch.randn(trainer.shape, generator=torch.Generator().manual_seed(1))
    stats = compute_mismatch(trainer, rollout, samples=0).stats
    x, y = rollout.numpy().ravel(), trainer.numpy().ravel()
    slope, intercept = np.polyfit(x, y, 1)
    r2 = np.corrcoef(x, y)[0, 1] ** 2
    assert stats["signature/slope"] == pytest.approx(slope, rel=1e-9)
    assert stats["signature/intercept"] == pytest.approx(intercept, rel=1e-9, abs=1e-12)
    assert stats["signature/r2"] == pytest.approx(r2, rel=1e-9)
    d = y - x
    assert stats["signature/d_mean"] == pytest.approx(d.mean(), rel=1e-12)
    assert stats["signature/frac_neg"] == pytest.approx((d < 0).mean())
    assert stats["signature/frac_pos"] == pytest.approx((d > 0).mean())


def test_buckets_positions_and_alignment() -> None:
    trainer = _batch(t=8)
    rollout = trainer.clone()
    rollout[:, :2] -= 0.5  # the first quarter of each response is off by 0.5
    stats = compute_mismatch(trainer, rollout, samples=0).stats
    assert stats["signature/abs_d_pos_q1"] == pytest.approx(0.5)
    assert stats["signature/abs_d_pos_q2"] == stats["signature/abs_d_pos_q4"] == 0.0
    p = rollout.exp().numpy()
    d = (trainer - rollout).abs().numpy()
    assert stats["signature/abs_d_prob_low"] == pytest.approx(d[p < 0.1].mean())
    assert stats["signature/abs_d_prob_mid"] == pytest.approx(d[(p >= 0.1) & (p < 0.9)].mean())
    # trainer position i paired with rollout i+1: agrees perfectly shifted, not as paired
    shifted = compute_mismatch(trainer[:, 1:], trainer[:, :-1], samples=0).stats
    assert shifted["signature/align_shift_next"] == 0.0
    assert shifted["signature/align_shift0"] > 0.1 and shifted["signature/align_shift_prev"] > 0.1


def test_token_ids_and_policy_lag() -> None:
    trainer = _batch()
    ids = torch.arange(trainer.numel()).view(trainer.shape)
    other = ids.clone()
    other[0, :5] += 1
    rollout = trainer.clone()
    rollout[12:] -= 0.2  # the lagged half of the batch
    stats = compute_mismatch(
        trainer,
        rollout,
        token_ids=ids,
        rollout_token_ids=other,
        policy_version=10,
        rollout_versions=[10] * 12 + [8] * 12,
        samples=0,
    ).stats
    assert stats["signature/token_id_mismatch_frac"] == pytest.approx(5 / trainer.numel())
    assert stats["signature/lag_mean"] == 1.0 and stats["signature/lag_max"] == 2.0
    assert stats["signature/abs_d_lag0"] == 0.0 and stats["signature/abs_d_lagged"] == pytest.approx(0.2)
    with pytest.raises(ValueError, match="policy_version"):
        compute_mismatch(trainer, rollout, rollout_versions=[1] * 24)
    with pytest.raises(ValueError, match="one integer per sequence"):
        compute_mismatch(trainer, rollout, policy_version=1, rollout_versions=[1, 2])


def test_packed_and_padded_agree() -> None:
    trainer = _batch(b=6, t=9)
    rollout = trainer + 0.01 * torch.randn(trainer.shape, generator=torch.Generator().manual_seed(3))
    padded = compute_mismatch(trainer, rollout, samples=0).stats
    packed = compute_mismatch(trainer.reshape(-1), rollout.reshape(-1), seq_lens=[9] * 6, samples=0).stats
    names = [n for n in collectors.SIGNATURE_METRICS if n in padded]
    assert (
        set(names) == {n for n in packed if n.startswith("signature/")} and "signature/abs_d_pos_q4" in names
    )
    for name in names:
        assert packed[name] == pytest.approx(padded[name], rel=1e-9, abs=1e-15), name


def test_signatures_read_a_bounded_sample_of_a_big_batch() -> None:
    trainer = _batch(b=2048, t=256)  # 2^19 tokens: every second row is read
    rollout = trainer - 0.1
    stats = compute_mismatch(trainer, rollout, samples=0).stats
    assert trainer.numel() > SAMPLE_TOKENS
    assert stats["signature/frac_pos"] == 1.0 and stats["signature/d_mean"] == pytest.approx(0.1)
    assert stats["mismatch/n_tokens"] == trainer.numel()  # the mismatch stats still read everything


def test_sampled_sequences_hold_the_worst_and_a_random_one(tmp_path) -> None:
    trainer = _batch(b=8, t=6)
    rollout = trainer.clone()
    rollout[5] -= 1.0  # sequence 5 has the largest mismatch
    mask = torch.ones_like(trainer, dtype=torch.bool)
    mask[:, 4:] = False  # two padded positions per row
    prompts = [[100 + i, 7] for i in range(8)]
    with collectors.init(run_id="s", root=tmp_path) as run:
        run.log_mismatch(
            3,
            trainer,
            rollout,
            mask,
            token_ids=torch.arange(48).view(8, 6),
            policy_version=3,
            rollout_versions=[3] * 8,
            weight_versions=[2] * 8,
            prompt_ids=prompts,
        )
    with Store(tmp_path) as store:
        rows = store.sql("SELECT * FROM sequences ORDER BY reason").to_pylist()
    assert [r["reason"] for r in rows] == ["largest_mismatch", "random"]
    worst = rows[0]
    assert worst["seq_index"] == 5 and worst["prompt_ids"] == [105, 7] and worst["prompt_len"] == 2
    assert worst["token_ids"] == list(range(30, 36)) and worst["rollout_version"] == 3
    assert worst["weight_version"] == 2 and worst["step"] == 3
    assert worst["trainer_logprobs"][:4] == trainer[5, :4].tolist()
    assert all(math.isnan(x) for x in worst["trainer_logprobs"][4:])  # masked positions are NaN
    assert rows[1]["seq_index"] != 5
