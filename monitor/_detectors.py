"""Detectors over one metric series (steps, values) of one run: small numpy, pure, testable.

Each returns :class:`Finding`s with the step range and a one-line explanation. Written in numpy
rather than with river/ruptures: each is a few lines, and the exact statistic is then visible in
the code the dashboard and the alert watcher share.
"""

from __future__ import annotations

import math

import numpy as np

from monitor._findings import Finding
from monitor._rules import Threshold

_MAD_TO_SIGMA = 1.4826


def _runs(mask: np.ndarray, min_length: int) -> list[tuple[int, int]]:
    """(start, end) index pairs of True runs at least ``min_length`` long (end inclusive)."""
    out, start = [], None
    for i, flag in enumerate([*mask.tolist(), False]):
        if flag and start is None:
            start = i
        elif not flag and start is not None:
            if i - start >= min_length:
                out.append((start, i - 1))
            start = None
    return out


def nonfinite(run_id: str, metric: str, steps: np.ndarray, values: np.ndarray) -> list[Finding]:
    """NaN or Inf is an error at once: the statistic itself broke."""
    bad = ~np.isfinite(values)
    return [
        Finding(
            run_id,
            metric,
            int(steps[a]),
            int(steps[b]),
            "error",
            "nonfinite",
            float(values[a]),
            f"{metric} is {values[a]} at step {int(steps[a])}"
            + (f" (through step {int(steps[b])})" if b > a else ""),
        )
        for a, b in _runs(bad, 1)
    ]


def threshold(
    run_id: str, metric: str, steps: np.ndarray, values: np.ndarray, rule: Threshold
) -> list[Finding]:
    """Level crossings held for ``rule.consecutive`` steps (hysteresis against one-step blips).

    One finding per excursion past the warn level; it is ``bad`` if the excursion holds the bad
    level for ``consecutive`` steps too.
    """
    levels = [lvl for lvl in (rule.warn, rule.bad) if lvl is not None]
    if not levels:
        return []
    finite = np.isfinite(values)

    def past(level: float) -> np.ndarray:
        return finite & ((values < level) if rule.below else (values > level))

    outer = max(levels) if rule.below else min(levels)  # the easier level to cross
    bad = past(rule.bad) if rule.bad is not None else np.zeros_like(finite)
    side = "below" if rule.below else "above"
    findings = []
    for a, b in _runs(past(outer), rule.consecutive):
        segment = values[a : b + 1]
        worst = float(segment.min() if rule.below else segment.max())
        is_bad = bool(_runs(bad[a : b + 1], rule.consecutive))
        level = rule.bad if is_bad else outer
        findings.append(
            Finding(
                run_id,
                metric,
                int(steps[a]),
                int(steps[b]),
                "bad" if is_bad else "warn",
                "threshold",
                worst,
                f"{metric} {side} {level:g} for {b - a + 1} steps from step {int(steps[a])} "
                f"(worst {worst:.4g}; {rule.source or 'configured'})",
            )
        )
    return findings


def cusum(
    run_id: str,
    metric: str,
    steps: np.ndarray,
    values: np.ndarray,
    *,
    baseline: int = 20,
    k: float = 1.0,
    h: float = 10.0,
) -> list[Finding]:
    """One-sided (upward) CUSUM in robust sigma units against the first ``baseline`` points:
    catches a slow creep that never crosses a fixed level. One finding per excursion, from its
    onset (where the sum left zero) to where it fell back (or the end), with the step it fired."""
    finite = np.isfinite(values)
    x, s = values[finite], steps[finite]
    if len(x) <= baseline:
        return []
    ref = x[:baseline]
    center = float(np.median(ref))
    # The larger of the robust and the plain estimate: a short baseline's MAD can come out small,
    # and an underestimated sigma is what makes CUSUM cry wolf.
    sigma = max(_MAD_TO_SIGMA * float(np.median(np.abs(ref - center))), float(np.std(ref, ddof=1)))
    sigma = max(sigma, 1e-3 * abs(center), 1e-12)
    total, start, fired, findings = 0.0, None, None, []

    def close(end: int) -> None:
        segment = x[start : end + 1]
        findings.append(
            Finding(
                run_id,
                metric,
                int(s[start]),
                int(s[end]),
                "warn",
                "cusum",
                float(segment.max()),
                f"{metric} rose from {center:.4g} (steps {int(s[0])}-{int(s[baseline - 1])}) to up to "
                f"{segment.max():.4g} over steps {int(s[start])}-{int(s[end])}; CUSUM passed {h:g} sigma at "
                f"step {int(s[fired])}",
                int(s[fired]),
            )
        )

    for i in range(baseline, len(x)):
        total = max(0.0, total + (x[i] - center) / sigma - k)
        if total > 0 and start is None:
            start = i
        if total > h and fired is None:
            fired = i
        if total == 0:
            if fired is not None:
                close(i - 1)
            start, fired = None, None
    if fired is not None:
        close(len(x) - 1)
    return findings


def spikes(
    run_id: str, metric: str, steps: np.ndarray, values: np.ndarray, *, window: int = 20, z: float = 8.0
) -> list[Finding]:
    """Isolated points more than ``z`` robust sigmas (median/MAD over the trailing window) from the
    median. A point whose successor is just as far off is a level shift (CUSUM's and the
    thresholds' business), not a spike; the newest point is judged against the median only."""
    findings = []
    for i in range(window, len(values)):
        if not math.isfinite(values[i]):
            continue
        past = values[i - window : i]
        past = past[np.isfinite(past)]
        if len(past) < window // 2:
            continue
        center = float(np.median(past))
        sigma = _MAD_TO_SIGMA * float(np.median(np.abs(past - center)))
        if sigma <= 0:
            continue
        score = (values[i] - center) / sigma
        following = values[i + 1] if i + 1 < len(values) else center
        if abs(score) > z and abs(following - center) <= z * sigma:  # isolated, not a level shift
            findings.append(
                Finding(
                    run_id,
                    metric,
                    int(steps[i]),
                    int(steps[i]),
                    "warn",
                    "spike",
                    float(values[i]),
                    f"{metric} spiked to {values[i]:.4g} at step {int(steps[i])} ({score:+.1f} robust sigma "
                    f"from the last {window} steps' median {center:.4g})",
                )
            )
    return findings


def ewma_residuals(
    run_id: str,
    metric: str,
    steps: np.ndarray,
    values: np.ndarray,
    *,
    alpha: float = 0.1,
    z: float = 6.0,
    warmup: int = 10,
) -> list[Finding]:
    """For metrics that trend by design (KL, entropy, clip rate): flag steps whose residual from the
    EWMA forecast is ``z`` times the EWMA of absolute residuals, so a trend alone never fires."""
    findings = []
    level, scale = None, None
    for i, v in enumerate(values):
        if not math.isfinite(v):
            continue
        if level is None:
            level, scale = float(v), 0.0
            continue
        residual = v - level
        if i >= warmup and scale and abs(residual) > z * scale:
            findings.append(
                Finding(
                    run_id,
                    metric,
                    int(steps[i]),
                    int(steps[i]),
                    "warn",
                    "ewma",
                    float(v),
                    f"{metric} jumped to {v:.4g} at step {int(steps[i])}, {abs(residual) / scale:.1f}x its "
                    f"usual step-to-step change (forecast {level:.4g})",
                )
            )
        scale = (1 - alpha) * scale + alpha * abs(residual) if scale else abs(residual)
        level = (1 - alpha) * level + alpha * float(v)
    return findings
