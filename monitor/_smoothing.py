"""Smoothing for charts: the time-weighted EMA that TensorBoard and W&B users expect.

A plain EMA weighs points by count, so a series logged unevenly (every step here, every tenth step
there, or by wall time) smooths differently in different stretches. Weighting each update by the x
gap it spans, with a half-life in x units, makes the curve depend only on the data's shape.
"""

from __future__ import annotations

import numpy as np


def ema(x: np.ndarray, y: np.ndarray, half_life: float) -> np.ndarray:
    """Time-weighted exponential moving average of ``y`` over increasing ``x``.

    ``half_life`` is in x units (steps, seconds, versions); 0 returns ``y`` unchanged. Non-finite
    values are skipped (the curve holds its level across them) rather than poisoning what follows.
    """
    if half_life < 0:
        raise ValueError(f"half_life must be >= 0, got {half_life}")
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"x and y differ in shape: {x.shape} vs {y.shape}")
    if half_life == 0 or y.size == 0:
        return y.copy()
    out = np.empty_like(y)
    level, prev_x = np.nan, None
    decay = np.log(2.0) / half_life
    for i in range(y.size):
        if np.isfinite(y[i]):
            if np.isnan(level):
                level = y[i]
            else:
                alpha = 1.0 - np.exp(-decay * max(x[i] - prev_x, 0.0))
                level += alpha * (y[i] - level)
            prev_x = x[i]
        out[i] = level
    return out
