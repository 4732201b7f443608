"""What every detector returns: one small record a person can read and a chart can shade."""

from __future__ import annotations

from dataclasses import dataclass

SEVERITIES = ("warn", "bad", "error")


@dataclass(frozen=True)
class Finding:
    run_id: str
    metric: str
    step_first: int
    step_last: int
    severity: str  # "warn" | "bad" | "error"
    detector: str  # "threshold" | "cusum" | "spike" | "ewma" | "nonfinite"
    value: float  # the most telling value in the range (the worst, or the detector's statistic)
    message: str
    step_detected: int | None = None  # when an online detector would have fired (None: step_first)
