"""How each metric is judged: which direction is bad, and the scale its noise lives on.

Mismatch metrics are positive and multiplicative (a bf16 head multiplies |dlogp| by 4, it does not
add 0.003), so they are judged as ``log(badness)``: a shift of ``log 2`` is "doubled" whatever the
run's floor, and heavy upper tails shrink to something CUSUM can sum. Metrics whose bad direction
is down and that are bounded by 1 (Pearson, ESS) are judged as ``log(1 - x)``, so "agreement
became perfect" can never raise a finding. Metrics that trend by design (KL, entropy, clip rate)
are judged by their step-to-step jumps only, on their own scale.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

# The transforms onto the scale a detector works on (larger is always worse there).
LOG = "log"  # log(max(x, floor))
LOG_ONE_MINUS = "log1m"  # log(max(1 - x, floor)): bounded-by-one metrics whose bad direction is down
LOG_ABS = "logabs"  # log(max(|x|, floor)): signed metrics whose size is the harm (k1, seq log-ratio)
LOG_ABS_LOG = "logabslog"  # log(max(|log x|, floor)): ratios that should be 1 (ratio_mean)
NEG_LOG = "neglog"  # log(max(-log x, floor)): a min ratio that should be near 1 from below
RAW = "raw"  # the value itself (trending metrics)


@dataclass(frozen=True)
class MetricSpec:
    """What is bad for one metric and how detectors see it.

    ``transform`` maps values so that up is bad; ``floor`` is the level under which a change does
    not matter. ``shift`` turns on the level detectors (the run's own baseline and, if
    ``reference``, a reference run), ``spike`` the isolated-point detector, ``jump`` the
    EWMA-residual detector for trending metrics, with ``direction`` "up", "down" or "both".
    """

    transform: str = LOG
    floor: float = 1e-12
    shift: bool = True
    spike: bool = True
    jump: bool = False
    direction: str = "up"
    label: str = "rose"  # how a bad move reads in a message: "rose", "fell", "grew"
    power: int = 1  # 2 for metrics quadratic in the log-ratio (k2, k3, chi2, 1 - ESS): ratios squared
    reference: bool = True  # also judged against a reference run, step by step

    def badness(self, values: np.ndarray) -> np.ndarray:
        """``values`` on the detector scale (up is worse); NaN stays NaN."""
        x = np.asarray(values, dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            if self.transform == LOG:
                y = x
            elif self.transform == LOG_ONE_MINUS:
                y = 1.0 - x
            elif self.transform == LOG_ABS:
                y = np.abs(x)
            elif self.transform == LOG_ABS_LOG:
                y = np.abs(np.log(np.maximum(x, 1e-300)))
            elif self.transform == NEG_LOG:
                y = -np.log(np.maximum(x, 1e-300))
            elif self.transform == RAW:
                return x.copy()
            else:
                raise ValueError(f"unknown transform {self.transform!r}")
            return np.log(np.maximum(y, self.floor))

    def value_of(self, badness: float) -> float:
        """Back from the detector scale to a value a person reads (for messages)."""
        if self.transform == RAW:
            return badness
        y = math.exp(badness)
        if self.transform == LOG_ONE_MINUS:
            return 1.0 - y
        return y


# Floors: the level under which a change in a metric does not matter. For |dlogp| it is 1e-4: ten
# times under what a healthy vLLM engine leaves against a float32 trainer (1.2e-3 here), thirty
# times under a bf16 lm_head's 3e-3; the other floors follow from it (k3 ~ dlogp^2 / 2, |dp| ~ p
# |dlogp|). Without them, a log scale turns a move from 1e-12 to 1e-10 into "100x", and two runs
# whose policies collapsed at different speeds differ "10x" at 1e-6.
def _up(floor: float, **kw: Any) -> MetricSpec:
    return MetricSpec(floor=floor, **kw)


# A max over tokens or sequences is an extreme value: its one-step outliers are the tail itself, so
# only a lasting shift of it is judged, and never against another run (whose extremes are other
# tokens). The reference comparison is kept to the mean-type metrics whose level is the floor a
# fault raises (|dlogp|, k2, k3, ratio std): testing all twenty against a second
# run would multiply its false alarms for no new fault.
def _max(floor: float) -> MetricSpec:
    return MetricSpec(floor=floor, spike=False, reference=False)


# Pearson: agreement past 0.99999 is perfect for any purpose (the field warns under 0.99; MiniMax's
# fixed fp32 head sat at 0.997), and under it 1 - r wanders 1e-7..1e-5 with the policy's spread of
# probabilities on healthy vLLM runs; a floor of 1e-6 turned that wander into "fell 2x" findings.
_DOWN_TO_ONE = MetricSpec(transform=LOG_ONE_MINUS, floor=1e-5, label="fell", power=2, reference=False)
_TREND_UP = MetricSpec(transform=RAW, shift=False, spike=False, jump=True, direction="up", label="jumped")
_TREND_BOTH = MetricSpec(transform=RAW, shift=False, spike=False, jump=True, direction="both", label="jumped")
_TREND_DOWN = MetricSpec(
    transform=RAW, shift=False, spike=False, jump=True, direction="down", label="dropped"
)

SPECS: dict[str, MetricSpec] = {
    # mismatch metrics (collectors/_mismatch.py): up is bad
    "mismatch/k2": _up(1e-8, power=2),
    "mismatch/k3": _up(1e-8, power=2),
    "mismatch/abs_logp_diff_mean": _up(1e-4),
    "mismatch/abs_logp_diff_max": _max(1e-3),
    # |dp| ~ p |dlogp| rises and then falls as a policy sharpens (largest while the sampled tokens
    # sit near p ~ 0.5-0.9), so two healthy runs reach their peaks at their own steps and heights
    # (2.5x apart on the demo's vLLM seed 4): no envelope of a reference absorbs a peak the slower
    # run reaches later. Judged on its own baseline and the field's levels.
    "mismatch/abs_prob_diff_mean": _up(2e-5, reference=False),
    "mismatch/abs_prob_diff_max": _max(1e-4),
    "mismatch/ratio_std": _up(1e-4),
    # chi2 = mean(rho^2) - 1 is dominated by mean(rho) - 1, noise of either sign (+-1e-4 on the
    # demo's healthy vLLM runs, where k3 is 1e-6): only the field's level (chi2 > 1) judges it
    "mismatch/chi2": MetricSpec(shift=False, spike=False, reference=False),
    "mismatch/ratio_max": MetricSpec(transform=LOG_ABS_LOG, floor=1e-2, spike=False, reference=False),
    "mismatch/seq_log_ratio_abs_max": _max(1e-3),
    "mismatch/seq_k3_max": _max(1e-7),
    # a fraction of tokens: 0 on healthy runs, one token in 10^4 is noise
    "mismatch/frac_outside_eps": _up(1e-4, reference=False),
    "mismatch/frac_outside_C": _up(1e-4, reference=False),
    # bounded by one, down is bad: judged as 1 - x going up
    "mismatch/prob_pearson": _DOWN_TO_ONE,
    "mismatch/ess": MetricSpec(transform=LOG_ONE_MINUS, floor=2e-8, label="fell", power=2, reference=False),
    "mismatch/ratio_min": MetricSpec(
        transform=NEG_LOG, floor=1e-2, spike=False, reference=False, label="fell"
    ),
    # signed means of the log-ratio: noise of either sign around 0 on a healthy run, so the size of
    # one is no level (|noise| straddles any floor); only the field's level (ratio_mean) and NaN
    # judge them. A consistent sign is a cause's signature, left to the diagnosis (sign balance).
    "mismatch/k1": MetricSpec(transform=LOG_ABS, shift=False, spike=False, reference=False),
    "mismatch/seq_log_ratio_mean": MetricSpec(transform=LOG_ABS, shift=False, spike=False, reference=False),
    "mismatch/ratio_mean": MetricSpec(transform=LOG_ABS_LOG, shift=False, spike=False, reference=False),
    # training metrics that trend by design: only sudden jumps count
    "train/kl_ref": _TREND_UP,
    "train/ppo_kl": _TREND_UP,
    "train/clip_frac": _TREND_UP,
    "train/entropy": _TREND_BOTH,
    "train/grad_norm": _TREND_UP,
    "reward/mean": _TREND_DOWN,
}


def spec_for(metric: str) -> MetricSpec | None:
    """The spec of ``metric``; None for metrics judged only for NaN/Inf (counts, context, the
    user's own names), which is what keeps an unknown metric from raising guesses."""
    return SPECS.get(metric)
