"""Drift detection over what ``storage`` returns: pure functions, no Streamlit, no I/O of its own.

- detectors over one run's metric series (thresholds with hysteresis, CUSUM creep, robust-z spikes,
  EWMA residuals for trending metrics, NaN/Inf), and their attribution to mid-run engine changes;
- flag correlation across runs and segments, and flag diffs;
- parity reports of a run against a reference run (Markdown and HTML);
- alert rules, their state machine, webhook notifiers, and the store watcher.
"""

from monitor._alerts import Alert, AlertEngine, Rule, RuleError, WebhookNotifier, default_rules, load_rules
from monitor._detectors import cusum, ewma_residuals, nonfinite, spikes, threshold
from monitor._findings import SEVERITIES, Finding
from monitor._flags import (
    ConfigChange,
    FlagEffect,
    Segment,
    config_changes,
    flag_diff,
    flag_effects,
    segments,
)
from monitor._parity import CONTEXT_METRICS, DEFAULT_TOLERANCES, MetricParity, ParityReport, parity
from monitor._rules import CREEPING, DEFAULT_THRESHOLDS, TRENDING, Threshold
from monitor._scan import Attribution, attribute, detect, detect_run
from monitor._smoothing import ema
from monitor._watch import AlertWatcher

__all__ = [
    "CONTEXT_METRICS",
    "CREEPING",
    "DEFAULT_THRESHOLDS",
    "DEFAULT_TOLERANCES",
    "SEVERITIES",
    "TRENDING",
    "Alert",
    "AlertEngine",
    "AlertWatcher",
    "Attribution",
    "ConfigChange",
    "Finding",
    "FlagEffect",
    "MetricParity",
    "ParityReport",
    "Rule",
    "RuleError",
    "Segment",
    "Threshold",
    "WebhookNotifier",
    "attribute",
    "config_changes",
    "cusum",
    "default_rules",
    "detect",
    "detect_run",
    "ema",
    "ewma_residuals",
    "flag_diff",
    "flag_effects",
    "load_rules",
    "nonfinite",
    "parity",
    "segments",
    "spikes",
    "threshold",
]
