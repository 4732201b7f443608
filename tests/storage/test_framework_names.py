"""Each framework's name map on a metrics dict shaped exactly like the one it logs (keys as they reach
W&B, read from each framework's source: docs/frameworks.md cites the file behind every key).

Exact twins are mapped; look-alikes keep the framework's name: a mean of per-sequence means, a
ratio after truncation, a KL of the other sign, mean(exp|d|) instead of mean|d|."""

from __future__ import annotations

import pytest

from logprobe.storage import SOURCES, map_name

# One step's keys per framework (values do not matter to the map), and what logprobe calls them.
LOGGED = {
    "prime-rl": {
        "mismatch_kl/all/mean": "mismatch/k3",
        "mismatch_kl/all/max": None,
        "mismatch_kl/all/std": None,
        "masked_mismatch_kl/mean": None,  # a mean of per-sequence means over DPPO-masked tokens
        "unmasked_mismatch_kl/mean": None,
        "kl_ent_ratio/mean": None,  # k3 / entropy
        "entropy/all/mean": "train/entropy",
        "optim/grad_norm": "train/grad_norm",
        "loss/mean": None,  # a mean over micro-batches
        "is_masked/mean": None,
    },
    "slime": {
        "train/train_rollout_logprob_abs_diff": None,  # per-rollout means by default
        "train/mis_kl": None,
        "train/mis_k3_kl": None,
        "train/mis_log_ppl_abs_diff": None,
        "train/mis_chi2_token": None,
        "train/ois": None,  # pi_theta / pi_old
        "train/pg_clipfrac": None,
        "rollout/raw_reward": "reward/mean",
        "rollout/response_len/mean": "response/length_mean",
        "rollout/response_len/max": "response/length_max",
    },
    "skyrl": {
        "policy/rollout_train_logprobs_abs_diff_mean": "mismatch/abs_logp_diff_mean",
        "policy/rollout_train_logprobs_abs_diff_max": "mismatch/abs_logp_diff_max",
        "policy/rollout_train_logprobs_abs_diff_std": None,
        "policy/minibatch_rollout_logprobs_abs_diff_mean": None,  # against the drifted policy
        "policy/loss_metrics/is_ratio_mean": None,  # clamped at +-20
        "policy/policy_entropy": None,  # a mean of micro-batch means
        "policy/loss_metrics/clip_ratio": None,
        "reward/avg_raw_reward": "reward/mean",
        "generate/avg_num_tokens": "response/length_mean",
        "generate/max_num_tokens": "response/length_max",
    },
    "openrlhf": {
        "train/vllm_kl": "mismatch/k1",  # mean(log mu - log pi)
        "train/ppo_clip_ratio": "train/clip_frac",
        "train/ppo_kl": None,  # policy drift
        "train/rollout/reward_mean": "reward/mean",
        "train/rollout/reward_std": "reward/std",
        "train/rollout/response_length_mean": "response/length_mean",
    },
    "areal": {
        "ppo_actor/update/behave_approx_kl/avg": None,  # +d: minus logprobe's k1, over kept tokens
        "ppo_actor/update/behave_imp_weight/avg": None,  # clamped or masked
        "ppo_actor/update/rs_filtered_fraction": None,
        "ppo_actor/update/entropy/avg": "train/entropy",
        "ppo_actor/update/clip_ratio/avg": "train/clip_frac",
        "rollout/reward": "reward/mean",
    },
    "nemo-rl": {
        "train/token_mult_prob_error": None,  # mean(exp|d|), not mean|d|
        "train/gen_kl_error": None,  # k3 or k1 by config; a sum over global batches
        "train/policy_kl_error": None,
        "train/sampling_importance_ratio": None,  # after truncated IS
        "train/reward": "reward/mean",
        "train/mean_gen_tokens_per_sample": "response/length_mean",
        "train/max_gen_tokens_per_sample": "response/length_max",
    },
}


@pytest.mark.parametrize("framework", list(LOGGED))
def test_each_framework_maps_its_exact_twins_and_keeps_the_rest(framework: str) -> None:
    for name, expected in LOGGED[framework].items():
        assert map_name(name, framework) == (expected or name), (framework, name)


def test_every_framework_has_a_map_and_unknown_ones_are_named() -> None:
    assert set(LOGGED) | {"trl", "verl"} == set(SOURCES)
    with pytest.raises(ValueError, match="unknown framework 'megatron'"):
        map_name("x", "megatron")


def test_maps_agree_where_frameworks_share_a_name() -> None:
    """With no framework named (the importers, the tap's default), a name any map knows is mapped:
    two maps must never send one name to two places."""
    seen: dict[str, tuple[str, str]] = {}
    for framework, table in SOURCES.items():
        for name, target in table.items():
            if name in seen:
                assert seen[name][1] == target, (name, seen[name], (framework, target))
            seen[name] = (framework, target)
    for framework, logged in LOGGED.items():
        for name, expected in logged.items():
            if expected is not None:
                assert map_name(name) == expected, (framework, name)
