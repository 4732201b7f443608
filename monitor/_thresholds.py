"""Default thresholds from the field (docs/design.md, with the source of each); all configurable."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Threshold:
    """Fires when the value is past a level for ``for_steps`` steps in a row (above it, or below it
    when ``lower_is_worse``); the words are those of alert rules (``monitor.Rule``)."""

    warn: float | None = None
    bad: float | None = None
    lower_is_worse: bool = False  # ESS, Pearson
    for_steps: int = 3
    source: str = ""

    def severity(self, value: float) -> str | None:
        worse = (lambda level: value < level) if self.lower_is_worse else (lambda level: value > level)
        if self.bad is not None and worse(self.bad):
            return "bad"
        if self.warn is not None and worse(self.warn):
            return "warn"
        return None


DEFAULT_THRESHOLDS: dict[str, list[Threshold]] = {
    "mismatch/abs_prob_diff_mean": [Threshold(warn=0.005, bad=0.01, source="verl FAQ")],
    "mismatch/k3": [Threshold(warn=1e-3, bad=1e-2, source="verl rollout_corr K3 guidance")],
    "mismatch/ratio_mean": [
        Threshold(bad=2.0, source="verl health check"),
        Threshold(bad=0.5, lower_is_worse=True, source="verl health check"),
    ],
    "mismatch/ess": [Threshold(bad=0.3, lower_is_worse=True, source="verl health check")],
    "mismatch/chi2": [Threshold(bad=1.0, source="verl health check")],
    "mismatch/prob_pearson": [Threshold(warn=0.99, lower_is_worse=True, source="MiniMax-M1")],
}
