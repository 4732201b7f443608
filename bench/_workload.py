"""The write workload the benchmarks share, and how they time a call.

``write_path``, ``trackers``, ``object_store``, ``live_latency`` and ``scale`` log the same metric
names, built the same way, and time each logging call with the same loop, so that a per-call
latency or a byte count in one report means what it means in the others.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

T = TypeVar("T")

# What an RL trainer logs every step (names as logprobe's collectors and common trainers use).
METRIC_NAMES = (
    "mismatch/k1",
    "mismatch/k2",
    "mismatch/k3",
    "mismatch/tis_weight_mean",
    "mismatch/max_abs_log_ratio",
    "train/loss",
    "train/policy_loss",
    "train/entropy",
    "train/clip_frac",
    "train/approx_kl",
    "train/grad_norm",
    "train/lr",
    "rollout/reward_mean",
    "rollout/reward_std",
    "rollout/response_len_mean",
    "rollout/tokens_per_s",
    "perf/step_time_s",
    "perf/gpu_mem_gb",
    "perf/mfu",
    "timing/weight_sync_s",
)
FLOOR_COMPRESSION = "zstd"  # the Writer's default, so the floor compresses as hard as logprobe does


# ---------------------------------------------------------------------------------------- workload


def metric_names(count: int) -> list[str]:
    """``count`` realistic names; beyond the 20 built-in ones, numbered ``extra/metric_NNN``."""
    extra = [f"extra/metric_{i:03d}" for i in range(max(0, count - len(METRIC_NAMES)))]
    return [*METRIC_NAMES, *extra][:count]


def make_workload(steps: int, n_metrics: int, seed: int = 0) -> list[dict[str, float]]:
    """One fresh dict of Python floats per step, built up front so that timing never includes it.

    Values drift and jitter per step (a trend times log-normal noise) so that Parquet cannot
    compress them away, and they are Python floats because that is what ``tensor.item()`` gives a
    trainer.
    """
    names = metric_names(n_metrics)
    rng = np.random.default_rng(seed)
    level = rng.uniform(1e-3, 1e3, size=n_metrics)
    trend = 1.0 + rng.uniform(-0.5, 0.5, size=n_metrics) * np.linspace(0.0, 1.0, steps)[:, None]
    noise = np.exp(0.1 * rng.standard_normal((steps, n_metrics)))
    rows: list[list[float]] = (level * trend * noise).tolist()
    return [dict(zip(names, row, strict=True)) for row in rows]


class ListFloor:
    """The least a Python logger can do: extend three column lists per step, write once at the end.

    It has no durability at all (a crash loses everything) and writes only step, name and value, so
    it is a floor for the per-call cost, not a competitor.
    """

    def __init__(self) -> None:
        self.steps: list[int] = []
        self.names: list[str] = []
        self.values: list[float] = []

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        self.names.extend(metrics)
        self.values.extend(metrics.values())
        self.steps.extend([step] * len(metrics))

    def close(self, path: Path) -> None:
        table = pa.table(
            {
                "step": pa.array(self.steps, pa.int64()),
                "name": pa.array(self.names, pa.string()),
                "value": pa.array(self.values, pa.float64()),
            }
        )
        pq.write_table(table, path, compression=FLOOR_COMPRESSION)


# ---------------------------------------------------------------------------------------- timing


@dataclasses.dataclass(frozen=True)
class Latency:
    """Per-call latency percentiles in microseconds."""

    p50_us: float
    p99_us: float
    p999_us: float
    max_us: float
    mean_us: float

    @classmethod
    def of(cls, samples_ns: Sequence[int]) -> Latency:
        us = np.asarray(samples_ns, dtype=np.float64) / 1e3
        p50, p99, p999 = np.percentile(us, [50.0, 99.0, 99.9])
        return cls(float(p50), float(p99), float(p999), float(us.max()), float(us.mean()))


def time_calls(
    log: Callable[[int, dict[str, float]], Any], workload: Sequence[dict[str, float]]
) -> list[int]:
    """Call ``log(step, metrics)`` once per step and return each call's duration in nanoseconds.

    The workload is built before the loop, so only the call itself is inside the clock.
    """
    perf = time.perf_counter_ns
    samples = [0] * len(workload)
    for step, metrics in enumerate(workload):
        t0 = perf()
        log(step, metrics)
        samples[step] = perf() - t0
    return samples


def timed(fn: Callable[[], T]) -> tuple[float, T]:
    """Seconds one call of ``fn`` took, and what it returned (a benchmark checks what it timed)."""
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def bytes_under(path: Path) -> tuple[int, int]:
    """(total bytes, number of files) of every file below ``path``.

    A file that vanishes while the tree is walked (a tool's lock or temp file) is not counted.
    """
    total = files = 0
    for directory, _, names in os.walk(path):
        for name in names:
            try:
                total += os.path.getsize(os.path.join(directory, name))
            except OSError:
                continue
            files += 1
    return total, files
