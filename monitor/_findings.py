"""What every detector returns: one small record a person can read and a chart can shade."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

SEVERITIES = ("warn", "bad", "error")
DETECTORS = ("nonfinite", "threshold", "shift", "reference", "spike", "jump")


@dataclass(frozen=True)
class Finding:
    run_id: str
    metric: str
    step_first: int
    step_last: int
    severity: str  # "warn" | "bad" | "error"
    detector: str  # one of DETECTORS
    value: float  # the most telling value in the range (the worst, or the excursion's level)
    message: str
    step_detected: int | None = None  # when the online detector fired (None: step_first)
    state: str = "closed"  # "open" while the excursion goes on

    @property
    def key(self) -> tuple[str, str, str, int]:
        """One excursion of one detector: later rows about it (worse, longer, closed) share it."""
        return (self.run_id, self.metric, self.detector, self.step_first)

    def row(self) -> dict[str, object]:
        """The ``findings`` table's columns: every field but ``run_id``, which is the partition."""
        row = dataclasses.asdict(self)
        del row["run_id"]
        if self.step_detected is None:
            row["step_detected"] = self.step_first
        return row
