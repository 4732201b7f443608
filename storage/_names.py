"""logprobe's metric names for what other trainers and trackers log, where the two mean the same thing.

One table per source, shared by the live adapters (``collectors.trl``, ``collectors.verl``) and the
importers (``storage.importers``), so a run logged by TRL, by verl or by logprobe itself lands on
the same chart, the same alert rule and the same parity report. A name is mapped only when the
quantity is the same; a look-alike stays as it was logged (the comments say why for the close calls).
Definitions: ../shared/docs/research/metrics-in-the-field.md.
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

SOURCES: Mapping[str, Mapping[str, str]] = {"trl": TRL, "verl": VERL}
# Prefixes that loggers put in front of a trainer's own names (HF Trainer's TensorBoard and MLflow
# callbacks write TRL's "loss" as "train/loss").
_WRAPPER_PREFIXES = ("train/",)


def map_name(name: str, source: str | None = None) -> str:
    """logprobe's name for ``name`` as logged by ``source`` ("trl", "verl", or None for either);
    ``name`` itself when there is no equivalent."""
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
