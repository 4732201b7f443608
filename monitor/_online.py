"""One run's detectors, fed as points arrive: the single engine behind the inline collector hook,
the store watcher, the dashboard's kept scan and ``detect_run``.

:class:`RunMonitor` holds, per metric, the detectors its :class:`MetricSpec` asks for and the
newest state of every finding. ``update`` takes only new points and returns the findings that
opened, worsened or closed (what the ``findings`` table records as it happens); ``findings()`` is
the run's current picture. Its whole state round-trips through JSON (``state``/``from_state``),
which is how the dashboard keeps a scan on disk and resumes it with only the new files.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from logprobe.monitor._alerts import one_number
from logprobe.monitor._detectors import DEFAULT_ARL0, Baseline, Detector, Jump, Level, NonFinite, Shift
from logprobe.monitor._findings import Finding
from logprobe.monitor._specs import MetricSpec, spec_for
from logprobe.monitor._thresholds import DEFAULT_THRESHOLDS, Threshold

# 2: the detectors' calibration changed (CUSUM scale and offset, the spike's Pareto tail), so a scan
# kept under version 1 is not resumed but done again with the new detectors.
# 3: the CUSUM takes a heavy innovation's echoes off (two more numbers of state per detector).
# 4: a detector against a reference run starts its sum at h / 2 (fast initial response).
STATE_VERSION = 4


@dataclass(frozen=True)
class Settings:
    """Knobs shared by every metric of a run; the defaults are what the detection report measures."""

    arl0: float = DEFAULT_ARL0  # healthy steps between false alarms, per detector and metric
    warmup: int = 200  # steps of the run's own baseline before the shift detector judges
    min_ratio: float = 1.5  # a shift from the run's own baseline smaller than this is not reported
    # ... and from a reference run: two runs' policies drift apart as they train, which moves their
    # mismatch floors apart too, so a difference must be larger to be a finding.
    reference_min_ratio: float = 2.0
    reference_min_points: int = 8  # a reference series shorter than this is not used


DEFAULT_SETTINGS = Settings()


@dataclass(frozen=True)
class Reference:
    """A healthy run to judge against: per metric, its baseline on the detector scale."""

    run_id: str
    baselines: dict[str, Baseline] = field(default_factory=dict)

    @classmethod
    def of_series(
        cls, run_id: str, series: dict[str, Any], settings: Settings = DEFAULT_SETTINGS
    ) -> Reference:
        """From ``{metric: values}`` (steps 0, 1, ...) or ``{metric: (steps, values)}``."""
        baselines = {}
        for metric, data in series.items():
            spec = spec_for(metric)
            if spec is None or not spec.shift or not spec.reference:
                continue
            steps, values = data if isinstance(data, tuple) else (np.arange(len(data)), data)
            g = spec.badness(np.asarray(values, dtype=np.float64))
            if np.isfinite(g).sum() >= settings.reference_min_points:
                baselines[metric] = Baseline.curve_of(np.asarray(steps), g, run_id, min_sigma=math.log(1.05))
        return cls(run_id, baselines)


class MetricMonitor:
    """The detectors of one metric, fed in step order (older or repeated steps are ignored)."""

    def __init__(
        self,
        run_id: str,
        metric: str,
        rules: list[Threshold],
        reference: Baseline | None,
        settings: Settings,
    ) -> None:
        self.spec: MetricSpec | None = spec_for(metric)
        self.last_step: int | None = None
        self.detectors: list[Detector] = [NonFinite(run_id, metric)]
        self.detectors += [Level(run_id, metric, rule) for rule in rules]
        spec = self.spec
        if spec is not None:
            if spec.shift:
                self.detectors.append(
                    Shift(
                        run_id,
                        metric,
                        spec,
                        warmup=settings.warmup,
                        arl0=settings.arl0,
                        min_ratio=settings.min_ratio,
                    )
                )
                if reference is not None and spec.reference:
                    self.detectors.append(
                        Shift(
                            run_id,
                            metric,
                            spec,
                            baseline=reference,
                            arl0=settings.arl0,
                            min_ratio=settings.reference_min_ratio,
                            recent=3,
                        )
                    )
            if spec.spike:
                self.detectors.append(
                    Jump(run_id, metric, spec, isolated=True, warmup=200, arl0=settings.arl0)
                )
            if spec.jump:
                self.detectors.append(
                    Jump(
                        run_id,
                        metric,
                        spec,
                        isolated=False,
                        alpha=0.1,
                        arl0=settings.arl0,
                        min_log_ratio=None,
                    )
                )

    def update(self, steps: np.ndarray, values: np.ndarray) -> list[Finding]:
        if self.last_step is not None:
            newer = steps > self.last_step
            steps, values = steps[newer], values[newer]
        if len(steps) == 0:
            return []
        self.last_step = int(steps[-1])
        g = self.spec.badness(values) if self.spec is not None else values
        out: list[Finding] = []
        for detector in self.detectors:
            out += detector.update(steps, values, g)
        return out


class RunMonitor:
    def __init__(
        self,
        run_id: str,
        *,
        thresholds: dict[str, list[Threshold]] | None = None,
        reference: Reference | None = None,
        settings: Settings = DEFAULT_SETTINGS,
    ) -> None:
        self.run_id = run_id
        self.thresholds = DEFAULT_THRESHOLDS if thresholds is None else thresholds
        self.reference = reference
        self.settings = settings
        self.metrics: dict[str, MetricMonitor] = {}
        self._findings: dict[tuple[str, str, str, int], Finding] = {}
        self.points = 0  # points consumed, for tests and benchmarks that check "only new points"

    def update(self, metric: str, steps: Any, values: Any) -> list[Finding]:
        """Feed new points of one metric; returns the findings that changed."""
        steps = np.asarray(steps, dtype=np.int64)
        values = np.asarray(values, dtype=np.float64)
        if steps.shape != values.shape or steps.ndim != 1:
            raise ValueError(
                f"steps and values must be 1-D of one length, got {steps.shape} and {values.shape}"
            )
        if len(steps) > 1 and np.any(np.diff(steps) <= 0):
            order = np.argsort(steps, kind="stable")
            steps, values = steps[order], values[order]
            starts = np.flatnonzero(np.concatenate(([True], np.diff(steps) > 0)))
            if len(starts) < len(steps):  # one step logged by several ranks: their mean
                values = np.add.reduceat(values, starts) / np.diff(np.r_[starts, len(steps)])
                steps = steps[starts]
        mon = self.metrics.get(metric)
        if mon is None:
            ref = self.reference.baselines.get(metric) if self.reference is not None else None
            mon = MetricMonitor(self.run_id, metric, self.thresholds.get(metric, []), ref, self.settings)
            self.metrics[metric] = mon
        self.points += len(steps)
        changed = mon.update(steps, values)
        for f in changed:
            self._findings[f.key] = f
        return changed

    def observe(self, step: int, metrics: Mapping[str, Any]) -> list[Finding]:
        """Feed one step of several metrics (the inline path: one ``Run.log`` call). A value that is
        not one number is skipped, as the writer skips it."""
        out: list[Finding] = []
        for metric, value in metrics.items():
            number = one_number(value)
            if number is not None and isinstance(metric, str):
                out += self.update(metric, [step], [number])
        return out

    def findings(self) -> list[Finding]:
        """Every finding so far, open ones as they stand now, by onset."""
        current = dict(self._findings)
        for mon in self.metrics.values():
            for det in mon.detectors:
                if det.open is not None:
                    current[det.open.key] = det.open
        return sorted(current.values(), key=lambda f: (f.step_first, f.metric, f.detector))

    # ----------------------------------------------------------------- persistence

    def state(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "run_id": self.run_id,
            "settings": asdict(self.settings),
            "reference": None
            if self.reference is None
            else {
                "run_id": self.reference.run_id,
                "baselines": {k: asdict(v) for k, v in self.reference.baselines.items()},
            },
            "points": self.points,
            "findings": [asdict(f) for f in self._findings.values()],
            "metrics": {
                name: {"last_step": mon.last_step, "detectors": [d.state() for d in mon.detectors]}
                for name, mon in self.metrics.items()
            },
        }

    @classmethod
    def from_state(
        cls, state: dict[str, Any], thresholds: dict[str, list[Threshold]] | None = None
    ) -> RunMonitor:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"monitor state version {state.get('version')!r}, expected {STATE_VERSION}")
        ref = state["reference"]
        reference = (
            None
            if ref is None
            else Reference(
                ref["run_id"],
                {
                    k: Baseline(**{f: tuple(x) if isinstance(x, list) else x for f, x in v.items()})
                    for k, v in ref["baselines"].items()
                },
            )
        )
        mon = cls(
            state["run_id"],
            thresholds=thresholds,
            reference=reference,
            settings=Settings(**state["settings"]),
        )
        mon.points = state["points"]
        for f in state["findings"]:
            finding = Finding(**f)
            mon._findings[finding.key] = finding
        for name, saved in state["metrics"].items():
            mm = MetricMonitor(
                mon.run_id,
                name,
                mon.thresholds.get(name, []),
                reference.baselines.get(name) if reference else None,
                mon.settings,
            )
            if len(mm.detectors) != len(saved["detectors"]):
                raise ValueError(f"monitor state of {name!r} does not match its detectors")
            mm.last_step = saved["last_step"]
            for det, det_state in zip(mm.detectors, saved["detectors"], strict=True):
                det.load(det_state)
            mon.metrics[name] = mm
        return mon
