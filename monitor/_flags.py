"""Which engine flags go with a metric's drift: per-segment comparison, ranked, confounds called out.

A *segment* is a stretch of one run under one engine configuration (a run whose engine restarted
with other flags has two). Each segment contributes one number, the metric's mean over its steps,
so a long run does not outvote a short one and samples stay honest: with a handful of runs the
Mann-Whitney test is exact, and a p-value near 0.1 is all four-versus-three can ever give.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from logprobe import storage
from logprobe.storage import VOLATILE_ENGINE_FLAGS, Store, flatten_flags

# Engine columns that describe the process, not the engine's settings.
_NOT_FLAGS = {"ts", "step_first", "source", "rank", "worker", "flags", "fingerprint", "run_id"}


@dataclass(frozen=True)
class Segment:
    run_id: str
    step_first: int
    step_last: int | None  # None: to the end of the run
    flags: dict[str, Any]
    value: float | None = None  # the metric's mean over the segment


@dataclass
class FlagEffect:
    flag: str
    groups: dict[str, list[float]]  # flag value -> segment means
    high_value: str  # the value whose segments have the highest median
    effect: float  # Cliff's delta of high_value's segments against the rest, in [-1, 1]
    median_ratio: float | None  # median(high) / median(rest)
    p_value: float  # exact Mann-Whitney (two-sided) when samples are small
    confounded_with: list[str] = field(default_factory=list)

    @property
    def n(self) -> int:
        return sum(len(v) for v in self.groups.values())


def engine_flags(row: dict[str, Any]) -> dict[str, Any]:
    """One engines row as flat ``flag -> value``: its typed columns plus top-level scalar flags."""
    flags = {k: v for k, v in row.items() if k not in _NOT_FLAGS and v is not None}
    try:
        extra = json.loads(row.get("flags") or "{}")
    except ValueError:
        extra = {}
    for key, value in flatten_flags(extra).items():
        if isinstance(value, str | int | float | bool) and key not in flags:
            flags[f"flags.{key}"] = value
    return {k: v for k, v in flags.items() if not VOLATILE_ENGINE_FLAGS.search(k)}


def segments(store: Store, metric: str, run_ids: list[str] | None = None) -> list[Segment]:
    """Every run's engine-configuration segments with the metric's mean over each."""
    by_run: dict[str, list[dict[str, Any]]] = {}
    for row in storage.engines(store, run_ids).to_pylist():
        by_run.setdefault(row["run_id"], []).append(row)
    spans: list[tuple[str, int, int | None]] = []
    rows: list[dict[str, Any]] = []
    for run_id, configs in by_run.items():
        for i, row in enumerate(configs):
            first = row["step_first"] if row["step_first"] is not None else 0
            nxt = configs[i + 1]["step_first"] if i + 1 < len(configs) else None
            spans.append((run_id, first, None if nxt is None else nxt - 1))
            rows.append(row)
    means = storage.span_means(store, metric, spans)
    return [
        Segment(run_id, first, last, engine_flags(row), mean)
        for (run_id, first, last), row, mean in zip(spans, rows, means, strict=True)
    ]


def flag_effects(segs: list[Segment]) -> list[FlagEffect]:
    """Rank every flag whose value varies across segments by how strongly it separates the metric."""
    segs = [s for s in segs if s.value is not None and math.isfinite(s.value)]
    keys = sorted({k for s in segs for k in s.flags})
    partitions: dict[str, tuple] = {}
    effects: dict[str, FlagEffect] = {}
    for key in keys:
        labels = [_label(s.flags.get(key)) for s in segs]
        if len(set(labels)) < 2 or len(set(labels)) == len(labels):
            continue  # constant, or unique per segment (an id or a path): nothing to compare
        groups: dict[str, list[float]] = {}
        for label, seg in zip(labels, segs, strict=True):
            groups.setdefault(label, []).append(seg.value)
        effects[key] = _compare(key, groups)
        partitions[key] = _partition(labels)
    # Flags that split the segments identically cannot be told apart: report them together.
    by_partition: dict[tuple, list[str]] = {}
    for key, part in partitions.items():
        by_partition.setdefault(part, []).append(key)
    ranked = []
    for members in by_partition.values():
        lead = sorted(members, key=_flag_priority)[0]
        effect = effects[lead]
        effect.confounded_with = [m for m in sorted(members) if m != lead]
        ranked.append(effect)
    return sorted(ranked, key=lambda e: (e.p_value, -abs(e.effect)))


def flag_diff(store: Store, run_a: str, run_b: str) -> list[tuple[str, str, str]]:
    """(flag, values in a, values in b) for every flag whose values differ between two runs."""

    def values(run_id: str) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        for seg in segments(store, "", [run_id]):
            for k, v in seg.flags.items():
                out.setdefault(k, set()).add(_label(v))
        return out

    a, b = values(run_a), values(run_b)
    diff: list[tuple[str, str, str]] = []
    for key in sorted(set(a) | set(b), key=_flag_priority):
        va, vb = a.get(key, {"-"}), b.get(key, {"-"})
        pair = (" -> ".join(sorted(va)), " -> ".join(sorted(vb)))
        # A copy inside the flags JSON that says what a typed column already said adds nothing.
        if va != vb and not (key.startswith("flags.") and any(d[1:] == pair for d in diff)):
            diff.append((key, *pair))
    return diff


@dataclass(frozen=True)
class ConfigChange:
    run_id: str
    step: int
    diff: list[tuple[str, str, str]]  # (flag, before, after)


def config_changes(store: Store, run_id: str) -> list[ConfigChange]:
    """Where a run's engine configuration changed mid-run, and which flags changed."""
    segs = segments(store, "", [run_id])
    out = []
    for before, after in itertools.pairwise(segs):
        keys = sorted(set(before.flags) | set(after.flags), key=_flag_priority)
        diff: list[tuple[str, str, str]] = []
        for k in keys:
            pair = (_label(before.flags.get(k)), _label(after.flags.get(k)))
            if pair[0] != pair[1] and not (k.startswith("flags.") and any(d[1:] == pair for d in diff)):
                diff.append((k, *pair))
        out.append(ConfigChange(run_id, after.step_first, diff))
    return out


def _compare(key: str, groups: dict[str, list[float]]) -> FlagEffect:
    from scipy.stats import mannwhitneyu

    high = max(groups, key=lambda g: (np.median(groups[g]), g))
    x = np.asarray(groups[high])
    y = np.asarray([v for g, vs in groups.items() if g != high for v in vs])
    greater = (x[:, None] > y[None, :]).sum()
    less = (x[:, None] < y[None, :]).sum()
    delta = float((greater - less) / (len(x) * len(y)))
    p = float(
        mannwhitneyu(
            x, y, alternative="two-sided", method="exact" if len(x) + len(y) <= 40 else "auto"
        ).pvalue
    )
    rest = float(np.median(y))
    ratio = float(np.median(x)) / rest if rest else None
    return FlagEffect(key, groups, high, delta, ratio, p)


def _partition(labels: list[str]) -> tuple:
    """Labels renamed by first appearance, so flags that split the segments the same way match."""
    names: dict[str, int] = {}
    return tuple(names.setdefault(label, len(names)) for label in labels)


def _flag_priority(key: str) -> tuple[int, str]:
    # Typed engine columns read better than their copies inside the flags JSON.
    return (1 if key.startswith("flags.") else 0, key)


def _label(value: Any) -> str:
    return "-" if value is None else str(value)
