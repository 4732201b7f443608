"""Detectors on synthetic series whose answer is known."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

import monitor
from monitor import Threshold
from storage import Store, Writer

STEPS = np.arange(100)


def test_threshold_needs_consecutive_steps_and_grades_severity() -> None:
    values = np.full(100, 1e-4)
    values[10] = 0.5  # a one-step blip: no finding
    values[30:34] = 2e-3  # four steps above warn
    values[60:63] = 0.05  # three steps above bad
    found = monitor.threshold("r", "mismatch/k3", STEPS, values, monitor.DEFAULT_THRESHOLDS["mismatch/k3"][0])
    assert [(f.step_first, f.step_last, f.severity) for f in found] == [(30, 33, "warn"), (60, 62, "bad")]
    assert "above 0.01 for 3 steps from step 60" in found[1].message
    assert found[1].value == 0.05


def test_threshold_below_for_ess_and_pearson() -> None:
    values = np.full(100, 0.999)
    values[50:55] = 0.98
    rule = Threshold(warn=0.99, below=True, consecutive=3, source="MiniMax-M1")
    (finding,) = monitor.threshold("r", "mismatch/prob_pearson", STEPS, values, rule)
    assert (finding.step_first, finding.step_last, finding.severity) == (50, 54, "warn")
    assert "below 0.99" in finding.message and finding.value == pytest.approx(0.98)


def test_cusum_catches_a_slow_creep_no_level_would() -> None:
    rng = np.random.default_rng(0)
    values = 1e-4 + rng.normal(0, 1e-5, 100)
    values[40:] += np.linspace(0, 2e-4, 60)  # creeps to 3e-4: far below the 1e-3 warn level
    assert (
        monitor.threshold("r", "mismatch/k3", STEPS, values, monitor.DEFAULT_THRESHOLDS["mismatch/k3"][0])
        == []
    )
    found = monitor.cusum("r", "mismatch/k3", STEPS, values)
    assert found and 40 <= found[0].step_first <= 70 and found[0].detector == "cusum"
    flat = 1e-4 + rng.normal(0, 1e-5, 100)
    assert monitor.cusum("r", "mismatch/k3", STEPS, flat) == []


def test_spikes_use_a_robust_trailing_window() -> None:
    rng = np.random.default_rng(1)
    values = 1.0 + rng.normal(0, 0.01, 100)
    values[70] = 1.5
    (spike,) = monitor.spikes("r", "reward/mean", STEPS, values)
    assert spike.step_first == 70 and "spiked to 1.5" in spike.message


def test_ewma_ignores_a_trend_but_flags_a_jump() -> None:
    values = np.linspace(0.0, 0.5, 100) + np.random.default_rng(2).normal(0, 0.002, 100)
    assert monitor.ewma_residuals("r", "train/kl_ref", STEPS, values) == []
    values[80] += 0.3
    found = monitor.ewma_residuals("r", "train/kl_ref", STEPS, values)
    assert [f.step_first for f in found] == [80]


def test_nan_and_inf_are_errors_at_once() -> None:
    values = np.ones(100)
    values[5] = np.nan
    values[6] = np.inf
    (finding,) = monitor.nonfinite("r", "mismatch/k1", STEPS, values)
    assert (finding.step_first, finding.step_last, finding.severity) == (5, 6, "error")


def test_detect_run_reads_the_store(tmp_path: Path) -> None:
    with Writer(tmp_path) as writer:
        writer.append("runs", "r", {"name": "r", "created_at": time.time()})
        for step in range(50):
            k3 = 0.05 if step >= 40 else 1e-5
            writer.log_metrics("r", step, {"mismatch/k3": k3, "train/entropy": 5.0 - step * 0.01})
    found = monitor.detect_run(Store(tmp_path), "r")
    bad = [f for f in found if f.severity == "bad"]
    assert [(f.metric, f.step_first, f.step_last) for f in bad] == [("mismatch/k3", 40, 49)]
    assert not [f for f in found if f.metric == "train/entropy"]


@pytest.mark.parametrize("seed", range(5))
def test_delay_and_false_alarms_on_known_change_points(seed: int) -> None:
    rng = np.random.default_rng(seed)
    noise = rng.normal(0, 1e-5, 200)
    # a step change at 120: CUSUM fires within 3 steps, thresholds within consecutive+1
    step_series = 1e-4 + noise + np.where(np.arange(200) >= 120, 0.02, 0.0)
    creep = [
        f for f in monitor.detect("r", "mismatch/k3", np.arange(200), step_series) if f.detector == "cusum"
    ]
    assert len(creep) == 1 and 120 <= creep[0].step_detected <= 123
    level = [
        f
        for f in monitor.detect("r", "mismatch/k3", np.arange(200), step_series)
        if f.detector == "threshold"
    ]
    assert [(f.step_first, f.severity) for f in level] == [(120, "bad")]
    # a slow ramp from 100 on: CUSUM within 25 steps; no false alarm before it
    ramp = 1e-4 + noise + np.clip(np.arange(200) - 100, 0, None) * 2e-6
    found = monitor.cusum("r", "mismatch/k3", np.arange(200), ramp)
    assert len(found) == 1 and 100 <= found[0].step_detected <= 125
    # a stationary control: nothing from any detector
    control = 1e-4 + rng.normal(0, 1e-5, 200)
    assert monitor.detect("r", "mismatch/k3", np.arange(200), control) == []
    trending = np.linspace(1.0, 0.2, 200) + rng.normal(0, 0.003, 200)
    assert monitor.detect("r", "train/entropy", np.arange(200), trending) == []


def test_ema_is_weighted_by_the_x_gap_not_the_point_count() -> None:
    from monitor import ema

    # A step from 0 to 1: after one half-life the curve is halfway, however densely it was logged.
    dense_x = np.arange(0, 11, dtype=float)
    dense = ema(dense_x, np.r_[0.0, np.ones(10)], half_life=10)
    sparse = ema(np.array([0.0, 10.0]), np.array([0.0, 1.0]), half_life=10)
    assert sparse[-1] == pytest.approx(0.5)
    assert dense[-1] == pytest.approx(0.5, abs=1e-12)
    held = ema(np.arange(4.0), np.array([1.0, np.nan, np.inf, 1.0]), half_life=2)
    assert np.all(held == 1.0)
    assert np.array_equal(ema(dense_x, dense_x, 0), dense_x)
    with pytest.raises(ValueError, match="half_life"):
        ema(dense_x, dense_x, -1)
