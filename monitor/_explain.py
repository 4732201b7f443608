"""The recent evidence of one run, held in memory by the process that logs it, so an alert that
fires inline can name its likely cause without reading the store back.

The collector feeds it what it already has in hand (each step's metrics, its events, engine configs
and the sampled sequences' versions); it keeps a bounded window and builds the same
:class:`~monitor._causes.Evidence` the store-backed diagnosis builds, so both name causes by the same
rules.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Mapping
from typing import Any

import numpy as np

from logprobe.monitor._alerts import one_number
from logprobe.monitor._causes import Diagnosis, Evidence, diagnose_evidence

KEPT = ("mismatch/abs_logp_diff_mean", "rollout/prefix_cache_hit_tokens", "engine/prefix_cache_hits")


class EvidenceWindow:
    """The last ``max_steps`` steps of the metrics the cause rules read, with events and engines."""

    def __init__(
        self,
        run_id: str,
        reference_level: float | None = None,
        reference_median: float | None = None,
        max_steps: int = 512,
    ) -> None:
        self.run_id = run_id
        self.reference_level = reference_level
        self.reference_median = reference_median
        self.max_steps = max_steps
        self._steps: OrderedDict[int, dict[str, float]] = OrderedDict()
        self._events: deque[tuple[int | None, str, dict[str, Any]]] = deque(maxlen=4 * max_steps)
        self._engines: deque[dict[str, Any]] = deque(maxlen=64)
        self._gaps: dict[int, float] = {}

    def observe(self, step: int, metrics: Mapping[str, Any]) -> None:
        kept = {}
        for name, value in metrics.items():
            if isinstance(name, str) and (name.startswith("signature/") or name in KEPT):
                number = one_number(value)
                if number is not None:
                    kept[name] = number
        if not kept:
            return
        self._steps.setdefault(step, {}).update(kept)
        self._steps.move_to_end(step)
        while len(self._steps) > self.max_steps:
            old, _ = self._steps.popitem(last=False)
            self._gaps.pop(old, None)

    def event(self, step: int | None, kind: str, payload: Mapping[str, Any]) -> None:
        self._events.append((step, kind, dict(payload)))

    def engine(self, row: Mapping[str, Any]) -> None:
        self._engines.append(dict(row))

    def gap(self, step: int, gap: float) -> None:
        """The engine's weight version minus the trainer's for a sequence of ``step`` (the smallest wins)."""
        self._gaps[step] = min(gap, self._gaps.get(step, gap))

    def evidence(self) -> Evidence:
        steps = np.array(sorted(self._steps), dtype=np.int64)
        names = {n for values in self._steps.values() for n in values}
        series = {n: np.array([self._steps[s].get(n, np.nan) for s in steps]) for n in names}
        gaps = np.array([self._gaps.get(int(s), np.nan) for s in steps]) if self._gaps else None
        engines = sorted(self._engines, key=lambda r: r.get("step_first") or 0)
        return Evidence(
            self.run_id,
            steps,
            series,
            None,
            self.reference_level,
            self.reference_median,
            engines,
            list(self._events),
            gaps,
        )

    def explain(self) -> Diagnosis | None:
        """The most likely cause over the window, or None."""
        ranked = diagnose_evidence(self.evidence())
        return ranked[0] if ranked else None
