"""Drift detection over what ``storage`` returns: pure functions, no Streamlit, no I/O of its own.

Now: detectors over one run's metric series (thresholds with hysteresis, CUSUM creep, robust-z
spikes, EWMA residuals for trending metrics, NaN/Inf). Flag correlation, parity reports and alerts
are the rest of issue 5.
"""

from monitor._detectors import cusum, ewma_residuals, nonfinite, spikes, threshold
from monitor._findings import SEVERITIES, Finding
from monitor._rules import CREEPING, DEFAULT_THRESHOLDS, TRENDING, Threshold
from monitor._scan import detect, detect_run

__all__ = [
    "CREEPING",
    "DEFAULT_THRESHOLDS",
    "SEVERITIES",
    "TRENDING",
    "Finding",
    "Threshold",
    "cusum",
    "detect",
    "detect_run",
    "ewma_residuals",
    "nonfinite",
    "spikes",
    "threshold",
]
