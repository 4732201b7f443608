"""logprobe's metric names for what other trainers and trackers log, where the two mean the same thing.

One table per framework (TRL, verl, prime-rl, slime, SkyRL, OpenRLHF, AReaL, NeMo-RL), shared by
the live adapters (``collectors.trl``, ``collectors.verl``, ``collectors.tap_wandb``) and the
importers (``storage.importers``), so a run logged by any of them or by logprobe itself lands on the
same chart, the same alert rule and the same parity report. A name is mapped only when the
quantity is the same; a look-alike stays as it was logged (the comments say why for the close calls).
Definitions: ../shared/docs/research/metrics-in-the-field.md and docs/frameworks.md.
"""

from __future__ import annotations

from collections.abc import Mapping

# TRL (GRPOTrainer 1.16, names as they reach TrainerCallback.on_log).
TRL: Mapping[str, str] = {
    # |trainer - sampling| logprob over the completion mask: logprobe's abs_logp_diff.
    "sampling/sampling_logp_difference/mean": "mismatch/abs_logp_diff_mean",
    "sampling/sampling_logp_difference/max": "mismatch/abs_logp_diff_max",
    # Not mapped: sampling/importance_sampling_ratio/* is measured after TRL's truncation or masking
    # (a masked ratio counts as 0), so it is not logprobe's raw ratio_*; clip_ratio/* is the PPO clip
    # fraction against the trainer's own recompute, not the engine gap.
    "reward": "reward/mean",
    "reward_std": "reward/std",
    "kl": "train/kl_ref",  # KL to the reference model (beta > 0)
    "entropy": "train/entropy",
    "grad_norm": "train/grad_norm",
    "loss": "train/loss",
    "learning_rate": "train/learning_rate",
    "completions/mean_length": "response/length_mean",
    "completions/min_length": "response/length_min",
    "completions/max_length": "response/length_max",
}

# verl (debug metrics, rollout correction, PPO core; names as in its per-step metrics dict).
VERL: Mapping[str, str] = {
    # |exp(old) - exp(rollout)| over the response mask: probability space, like logprobe's abs_prob_diff.
    "training/rollout_probs_diff_mean": "mismatch/abs_prob_diff_mean",
    "training/rollout_probs_diff_max": "mismatch/abs_prob_diff_max",
    "training/rollout_actor_probs_pearson_corr": "mismatch/prob_pearson",
    "rollout_corr/kl": "mismatch/k1",  # mean(log mu - log pi)
    "rollout_corr/k3_kl": "mismatch/k3",  # mean(rho - 1 - log rho)
    "rollout_corr/chi2_token": "mismatch/chi2",  # E[rho^2] - 1
    # Not mapped: rollout_corr/rollout_is_* are statistics of the truncated, batch-normalised IS
    # weights, not of the raw ratio; training/rollout_probs_diff_std has no logprobe twin.
    "actor/pg_clipfrac": "train/clip_frac",
    "actor/ppo_kl": "train/ppo_kl",
    "actor/entropy": "train/entropy",
    "actor/grad_norm": "train/grad_norm",
    "actor/kl_loss": "train/kl_ref",
    "actor/pg_loss": "train/loss",
    "critic/score/mean": "reward/mean",
    "response_length/mean": "response/length_mean",
    "response_length/min": "response/length_min",
    "response_length/max": "response/length_max",
}

# The six frameworks below: names as they reach W&B, read from each one's source (commits and the
# file behind every key in docs/frameworks.md). Only exact twins are mapped: the same quantity,
# direction and token-level aggregation under the framework's defaults. The close calls left out:

# prime-rl: keys logged bare. Its per-token k3 over the loss mask is logprobe's k3. Not mapped:
# masked_/unmasked_mismatch_kl (means of per-sequence means over a DPPO-masked subset),
# kl_ent_ratio (k3 / entropy), loss/mean (a mean over micro-batches).
PRIME_RL: Mapping[str, str] = {
    "mismatch_kl/all/mean": "mismatch/k3",
    "entropy/all/mean": "train/entropy",
    "optim/grad_norm": "train/grad_norm",
}

# slime: train/<key>, averaged per rollout first unless --calculate-per-token-loss, so its
# train_rollout_logprob_abs_diff, mis_kl and mis_k3_kl are not logprobe's token means by default
# and keep their names; the rollout-side stats are plain means over samples.
SLIME: Mapping[str, str] = {
    "rollout/raw_reward": "reward/mean",
    "rollout/response_len/mean": "response/length_mean",
    "rollout/response_len/max": "response/length_max",
}

# SkyRL: the full-batch |rollout - trainer| logprob over the loss mask is logprobe's. Not mapped:
# the minibatch_* variants (means of micro-batch means, against the drifted policy), is_ratio_*
# (clamped at +-20, zeros in min/std), policy_entropy and clip_ratio (means of micro-batch means).
SKYRL: Mapping[str, str] = {
    "policy/rollout_train_logprobs_abs_diff_mean": "mismatch/abs_logp_diff_mean",
    "policy/rollout_train_logprobs_abs_diff_max": "mismatch/abs_logp_diff_max",
    "reward/avg_raw_reward": "reward/mean",
    "generate/avg_num_tokens": "response/length_mean",
    "generate/max_num_tokens": "response/length_max",
}

# OpenRLHF: train/<key>, token-weighted across micro-batches. vllm_kl = mean(log mu - log pi) is
# logprobe's k1 (same direction). Not mapped: train/kl and train/entropy_loss (rescaled by
# aggregate_loss), train/ppo_kl (policy drift, not the engine gap).
OPENRLHF: Mapping[str, str] = {
    "train/vllm_kl": "mismatch/k1",
    "train/ppo_clip_ratio": "train/clip_frac",
    "train/rollout/reward_mean": "reward/mean",
    "train/rollout/reward_std": "reward/std",
    "train/rollout/response_length_mean": "response/length_mean",
}

# AReaL: stats_tracker scopes. Not mapped: behave_approx_kl is +d (minus logprobe's k1) and only over
# the tokens rejection sampling kept; behave_imp_weight is clamped or masked, not the raw ratio.
AREAL: Mapping[str, str] = {
    "ppo_actor/update/entropy/avg": "train/entropy",
    "ppo_actor/update/clip_ratio/avg": "train/clip_frac",
    "rollout/reward": "reward/mean",
}

# NeMo-RL: train/<key>. Not mapped: token_mult_prob_error is mean(exp|d|), not mean|d|;
# gen_kl_error is k3 (or k1, by reference_policy_kl_type) and becomes a sum of per-batch means when
# a step has several global batches; sampling_importance_ratio is taken after truncated IS.
NEMO_RL: Mapping[str, str] = {
    "train/reward": "reward/mean",
    "train/mean_gen_tokens_per_sample": "response/length_mean",
    "train/max_gen_tokens_per_sample": "response/length_max",
}

SOURCES: Mapping[str, Mapping[str, str]] = {
    "trl": TRL,
    "verl": VERL,
    "prime-rl": PRIME_RL,
    "slime": SLIME,
    "skyrl": SKYRL,
    "openrlhf": OPENRLHF,
    "areal": AREAL,
    "nemo-rl": NEMO_RL,
}
# Prefixes that loggers put in front of a trainer's own names (HF Trainer's TensorBoard and MLflow
# callbacks write TRL's "loss" as "train/loss").
_WRAPPER_PREFIXES = ("train/",)


def map_name(name: str, source: str | None = None) -> str:
    """logprobe's name for ``name`` as logged by ``source`` (a key of ``SOURCES``, or None for any);
    ``name`` itself when there is no equivalent."""
    if source is not None and source not in SOURCES:
        raise ValueError(f"unknown framework {source!r}; choose from {', '.join(SOURCES)}")
    tables = [SOURCES[source]] if source is not None else list(SOURCES.values())
    for table in tables:
        if name in table:
            return table[name]
    for prefix in _WRAPPER_PREFIXES:
        if name.startswith(prefix):
            inner = name[len(prefix) :]
            for table in tables:
                if inner in table:
                    return table[inner]
    return name
