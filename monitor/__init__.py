"""Drift detection over what ``storage`` returns: pure functions, no Streamlit, no I/O of its own.

- online detectors over one run's metric series, each calibrated to a stated false-alarm rate
  (the field's thresholds with hysteresis, CUSUM shifts against the run's own baseline and against a
  reference run, isolated spikes, jumps of metrics that trend by design, NaN/Inf), the run monitor
  that feeds them only new points, the findings it keeps, and their attribution to engine changes;
- flag correlation across runs and segments, and flag diffs;
- diagnosis: a library of known causes, each a small rule over the collector's signatures, the
  engine's flags and the run's events, ranked with its evidence and fix;
- parity reports of a run against a reference run (Markdown and HTML);
- alert rules, their state machine, webhook notifiers, and the store watcher.
"""

from logprobe.monitor._alerts import (
    Alert,
    AlertEngine,
    Rule,
    RuleError,
    WebhookNotifier,
    default_rules,
    load_rules,
)
from logprobe.monitor._causes import CAUSES, RULES, CauseRule, Diagnosis, Evidence, diagnose_evidence
from logprobe.monitor._detectors import (
    DEFAULT_ARL0,
    Baseline,
    Jump,
    Level,
    NonFinite,
    Shift,
    cusum_limit,
    jump_limit,
)
from logprobe.monitor._diagnosis import diagnose, load_evidence, reference_level
from logprobe.monitor._diagnosis import markdown as diagnosis_markdown
from logprobe.monitor._explain import EvidenceWindow
from logprobe.monitor._findings import DETECTORS, SEVERITIES, Finding
from logprobe.monitor._flags import (
    ConfigChange,
    FlagEffect,
    Segment,
    config_changes,
    flag_diff,
    flag_effects,
    segments,
)
from logprobe.monitor._kept import findings_cache_dir, run_findings
from logprobe.monitor._online import Reference, RunMonitor, Settings
from logprobe.monitor._parity import CONTEXT_METRICS, DEFAULT_TOLERANCES, MetricParity, ParityReport, parity
from logprobe.monitor._scan import (
    Attribution,
    attribute,
    detect,
    detect_run,
    feed,
    load_reference,
    metric_rows,
    monitor_for,
    reference_of,
)
from logprobe.monitor._smoothing import ema
from logprobe.monitor._specs import SPECS, MetricSpec, spec_for
from logprobe.monitor._store_watcher import AlertWatcher
from logprobe.monitor._thresholds import DEFAULT_THRESHOLDS, Threshold

__all__ = [
    "CAUSES",
    "CONTEXT_METRICS",
    "DEFAULT_ARL0",
    "DEFAULT_THRESHOLDS",
    "DEFAULT_TOLERANCES",
    "DETECTORS",
    "RULES",
    "SEVERITIES",
    "SPECS",
    "Alert",
    "AlertEngine",
    "AlertWatcher",
    "Attribution",
    "Baseline",
    "CauseRule",
    "ConfigChange",
    "Diagnosis",
    "Evidence",
    "EvidenceWindow",
    "Finding",
    "FlagEffect",
    "Jump",
    "Level",
    "MetricParity",
    "MetricSpec",
    "NonFinite",
    "ParityReport",
    "Reference",
    "Rule",
    "RuleError",
    "RunMonitor",
    "Segment",
    "Settings",
    "Shift",
    "Threshold",
    "WebhookNotifier",
    "attribute",
    "config_changes",
    "cusum_limit",
    "default_rules",
    "detect",
    "detect_run",
    "diagnose",
    "diagnose_evidence",
    "diagnosis_markdown",
    "ema",
    "feed",
    "findings_cache_dir",
    "flag_diff",
    "flag_effects",
    "jump_limit",
    "load_evidence",
    "load_reference",
    "load_rules",
    "metric_rows",
    "monitor_for",
    "parity",
    "reference_level",
    "reference_of",
    "run_findings",
    "segments",
    "spec_for",
]
