"""Online detectors over one metric series: state plus new points, vectorised within a chunk.

Each detector is fed chunks of ``(steps, values)`` in step order and keeps what it needs between
chunks (a CUSUM sum, an EWMA level, the open excursion), so a watcher tick costs what was written
since the last tick, and a full scan is the same code fed one chunk. Within a chunk everything is
numpy: the CUSUM recursion ``S = max(0, S + z)`` is ``C - running_min(C)`` over the cumulative sum,
and EWMAs are first-order IIR filters (``scipy.signal.lfilter``), so a million points take
milliseconds. Python loops run only over findings, never over points.

Calibration: each detector is given an in-control average run length ``arl0`` (expected steps
between false alarms on a healthy series) and sets its own limit from it: CUSUM's ``h`` from
Siegmund's approximation, a jump's z from the normal tail. Heavy tails are clipped before summing
(a heavy innovation's echoes on autocorrelated noise taken off as well) and autocorrelation is
absorbed into the scale (the long-run standard deviation of an AR(1)), so the stated ARL holds on
realistic noise too; ``bench/detection.py`` measures it.

river's drift detectors (ADWIN, Page-Hinkley, KSWIN) were considered: they are per-point Python
(about 1 us a point, so 20 s for 1M x 20), two-sided, and state no ARL; ruptures' change points are
offline and quadratic. Neither fits a one-sided, calibrated, incremental monitor.
"""

from __future__ import annotations

import itertools
import math
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
from scipy.signal import lfilter
from scipy.stats import norm

from logprobe.monitor._findings import Finding
from logprobe.monitor._specs import MetricSpec
from logprobe.monitor._thresholds import Threshold

_MAD_TO_SIGMA = 1.4826
CLIP_SIGMA = 5.0  # CUSUM increments are clipped here (in long-run sigmas): one wild point adds at most this
_MEAN_ABS_TO_SIGMA = math.sqrt(math.pi / 2)

# Expected healthy steps between two false alarms of one detector on one metric. With four
# detectors on a metric, 1e6 each keeps the metric under 0.1 false flags per 10,000 steps.
DEFAULT_ARL0 = 1_000_000


def cusum_limit(k: float, arl0: float) -> float:
    """CUSUM decision limit ``h`` (in sigma) for reference value ``k`` and in-control ARL ``arl0``,
    from Siegmund's approximation ARL0 = (exp(2kb) - 2kb - 1) / (2k^2), b = h + 1.166."""
    lo, hi = 0.0, 200.0
    for _ in range(100):
        b = (lo + hi) / 2
        arl = (math.expm1(2 * k * b) - 2 * k * b) / (2 * k * k)
        lo, hi = (b, hi) if arl < arl0 else (lo, b)
    return max(lo - 1.166, 0.0)


def jump_limit(arl0: float, two_sided: bool) -> float:
    """z such that a normal residual passes it once in ``arl0`` steps."""
    return float(norm.isf(1.0 / (arl0 * (2 if two_sided else 1))))


@dataclass(frozen=True)
class Baseline:
    """Where a metric lives when healthy, on the detector scale: robust centre, marginal scale, the
    lag-1 autocorrelation, and the long-run scale CUSUM sums against."""

    center: float
    sigma: float
    rho: float
    n: int
    source: str  # "own" (the run's first steps) or the reference run's id
    # A reference run's level step by step (knots on the detector scale): runs trend as training
    # goes, so a candidate is held against the reference at the same steps, not its overall median.
    curve_steps: tuple[int, ...] = ()
    curve: tuple[float, ...] = ()
    # The healthy points' mean clipped score (in long-run sigmas) above the centre. The centre is a
    # median, and a skewed metric (most steps at its floor, one in five far above it) has its mean
    # well over its median: CUSUM increments taken from the median then drift upward on healthy
    # data and the sum passes any limit in time. Subtracting this keeps the in-control drift at -k.
    offset: float = 0.0

    def with_offset(self, g: np.ndarray) -> Baseline:
        """This baseline with ``offset`` measured on healthy points ``g`` around its centre."""
        g = g[np.isfinite(g)]
        if len(g) == 0:
            return self
        score = np.clip((g - self.center) / self.long_run_sigma, -CLIP_SIGMA, CLIP_SIGMA)
        return replace(self, offset=max(float(np.mean(score)), 0.0))

    def center_at(self, steps: np.ndarray) -> np.ndarray | float:
        if not self.curve:
            return self.center
        return np.interp(steps, self.curve_steps, self.curve)

    @classmethod
    def curve_of(
        cls, steps: np.ndarray, g: np.ndarray, source: str, min_sigma: float, knots: int = 2000
    ) -> Baseline:
        """A reference run's baseline: its level per step (a running median over a tenth of the
        run, at least 5 and at most 201 steps) and the noise around that level, times sqrt(2)
        since two runs' noises add in their difference. The window grows with the run because a
        short window follows autocorrelated noise itself: around a 5-step median, 200 steps of
        AR(1) rho 0.8 noise left residuals half as wide as the noise a candidate's CUSUM sums."""
        keep = np.isfinite(g)
        steps, g = np.asarray(steps)[keep], g[keep]
        order = np.argsort(steps, kind="stable")
        steps, g = steps[order], g[order]
        w = min(max(5, (len(g) // 10) | 1), 201, len(g))
        padded = np.concatenate((np.repeat(g[:1], w // 2), g, np.repeat(g[-1:], w - 1 - w // 2)))
        smooth = np.median(np.lib.stride_tricks.sliding_window_view(padded, w), axis=1)
        noise = cls.of(g - smooth, source, min_sigma)
        noise = noise.with_offset(g - smooth)
        # The envelope: the highest level the reference has shown up to each step. A run's mismatch
        # falls as its policy sharpens, and two runs sharpen at their own pace (the demo's vLLM
        # reference falls 100x in 24 steps while an equally healthy twin stays put), so "above
        # the reference at step t" would flag the slower one; "above anything the reference
        # showed so far" does not, and still sees a floor a fault raised.
        smooth = np.maximum.accumulate(smooth)
        if len(g) > knots:  # bounded state for a long reference: bucket medians
            edges = np.linspace(0, len(g), knots + 1).astype(int)
            steps = np.array([steps[a:b].mean() for a, b in itertools.pairwise(edges)])
            smooth = np.array([np.median(smooth[a:b]) for a, b in itertools.pairwise(edges)])
        return cls(
            float(np.median(smooth)),
            noise.sigma * math.sqrt(2),
            noise.rho,
            noise.n,
            source,
            tuple(float(x) for x in steps),
            tuple(float(x) for x in smooth),
            # measured on one run's noise; the difference of two runs' has sqrt(2) its spread
            noise.offset / math.sqrt(2),
        )

    @property
    def long_run_sigma(self) -> float:
        """The scale CUSUM sums against: the AR(1) long-run sigma, raised to an upper confidence
        bound for a baseline of ``n`` points worth ``n (1 - rho) / (1 + rho)`` independent ones
        (an estimated sigma that comes out low is what makes a CUSUM cry wolf)."""
        inflation = (1 + self.rho) / (1 - self.rho)
        effective = max(self.n / inflation, 2.0)
        return self.sigma * math.sqrt(inflation) * (1 + 2 / math.sqrt(2 * effective))

    @classmethod
    def of(cls, g: np.ndarray, source: str, min_sigma: float, detrend: bool = False) -> Baseline:
        """``detrend``: judge the spread around a straight line, so that a slow creep inside the
        points does not pass for noise or autocorrelation (used when a baseline is refined from
        a longer stretch of the run, which may already be creeping)."""
        g = g[np.isfinite(g)]
        n = len(g)
        if detrend:
            g = _detrended(g, float(np.median(g)) if n else 0.0)
        center = float(np.median(g)) if n else 0.0
        mad = _MAD_TO_SIGMA * float(np.median(np.abs(g - center))) if n else 0.0
        # A robust start, the larger of the MAD and the 10-90% spread: a metric that often sits at
        # its floor has a MAD of (nearly) 0 while its other points lie far above, and the spread
        # sees both modes.
        if n > 2:
            lo, hi = np.quantile(g, [0.1, 0.9])
            mad = max(mad, float(hi - lo) / 2.563)
        # Then the scale CUSUM actually needs: the sigma at which the points, clipped at
        # ``CLIP_SIGMA`` of it as the increments are, have a standard deviation of sigma (a fixed
        # point, reached from below and bounded by the plain std). On Gaussian noise that is the
        # std; on a skewed or heavy-tailed metric it is as wide as the clipped increments really
        # are, where a std winsorised at a few MADs came out 3-8x too small and cried wolf.
        sigma = max(mad, min_sigma)
        wins = g
        if n > 2:
            for _ in range(30):
                wins = np.clip(g, center - CLIP_SIGMA * sigma, center + CLIP_SIGMA * sigma)
                std = float(np.std(wins, ddof=1))
                if std <= sigma * 1.001:
                    break
                sigma = std
        rho = 0.0
        if n >= 8:
            c = wins - float(np.mean(wins))
            denom = float(np.dot(c, c))
            if denom > 0:
                # lag-1 autocorrelation, with the usual small-sample bias (about (1 + 3 rho) / n) added
                # back: a short baseline of an autocorrelated series always looks more independent.
                r = float(np.dot(c[1:], c[:-1]) / denom)
                rho = r + (1 + 3 * max(r, 0.0)) / n
            if n >= 40:
                # Batch means: the spread of 10 block averages is the long-run spread whatever the
                # correlation's shape; the rho that reproduces it, if larger, wins.
                blocks = wins[: n - n % 10].reshape(10, -1).mean(axis=1)
                lr = float(np.std(blocks, ddof=1)) * math.sqrt(n // 10)
                ratio = (lr / sigma) ** 2
                rho = max(rho, (ratio - 1) / (ratio + 1))
        return cls(center, sigma, min(max(rho, 0.0), 0.9), n, source)


def _detrended(g: np.ndarray, center: float) -> np.ndarray:
    """``g`` less its straight-line trend, its median put at ``center`` (a creep already under way
    in the points must not pass for healthy skew)."""
    g = g[np.isfinite(g)]
    if len(g) <= 2:
        return g
    x = np.arange(len(g), dtype=np.float64)
    slope, intercept = np.polyfit(x, g, 1)
    flat = g - (slope * x + intercept)
    return flat - float(np.median(flat)) + center


class Detector(ABC):
    """Base: feed chunks, get back the findings that opened, changed severity or closed."""

    name = ""

    def __init__(self, run_id: str, metric: str) -> None:
        self.run_id = run_id
        self.metric = metric
        self.open: Finding | None = None

    @abstractmethod
    def update(self, steps: np.ndarray, values: np.ndarray, g: np.ndarray) -> list[Finding]:
        """Feed one chunk in step order (``g``: the values on the detector scale)."""

    def state(self) -> dict[str, Any]:
        out = {k: v for k, v in vars(self).items() if k not in ("run_id", "metric", "spec", "rule")}
        out["open"] = None if self.open is None else asdict(self.open)
        if isinstance(out.get("baseline"), Baseline):
            out["baseline"] = asdict(out["baseline"])
        return out

    def load(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            if key == "open":
                value = None if value is None else Finding(**value)
            elif key == "baseline" and isinstance(value, dict):
                value = Baseline(**{k: tuple(v) if isinstance(v, list) else v for k, v in value.items()})
            setattr(self, key, value)

    def _finding(self, **fields: Any) -> Finding:
        return Finding(run_id=self.run_id, metric=self.metric, detector=self.name, **fields)


def _true_runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start and end (inclusive) indices of the runs of True in ``mask``."""
    padded = np.concatenate(([False], mask, [False])).astype(np.int8)
    edges = np.diff(padded)
    return np.flatnonzero(edges == 1), np.flatnonzero(edges == -1) - 1


class NonFinite(Detector):
    """NaN or Inf is an error at once: the statistic itself broke."""

    name = "nonfinite"

    def update(self, steps: np.ndarray, values: np.ndarray, g: np.ndarray) -> list[Finding]:
        bad = ~np.isfinite(values)
        if not bad.any() and self.open is None:
            return []
        out: list[Finding] = []
        starts, ends = _true_runs(bad)
        if self.open is not None and (len(starts) == 0 or starts[0] != 0):  # the run ended before
            out.append(replace(self.open, state="closed"))
            self.open = None
        for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
            first = self.open if (a == 0 and self.open is not None) else None
            step_first = first.step_first if first else int(steps[a])
            value = first.value if first else float(values[a])
            closed = b < len(values) - 1
            finding = self._finding(
                step_first=step_first,
                step_last=int(steps[b]),
                severity="error",
                value=value,
                message=f"{self.metric} is {value} at step {step_first}"
                + (f" (through step {int(steps[b])})" if int(steps[b]) > step_first else ""),
                step_detected=step_first,
                state="closed" if closed else "open",
            )
            if first is None or closed:
                out.append(finding)
            self.open = None if closed else finding
        return out


class Level(Detector):
    """The field's absolute levels, held for ``rule.for_steps`` steps (hysteresis against blips).

    One finding per excursion past the warn level, ``bad`` once the bad level holds as long. Not
    calibrated to an ARL: the levels are the field's judgement of harm, not of noise.
    """

    name = "threshold"

    def __init__(self, run_id: str, metric: str, rule: Threshold) -> None:
        super().__init__(run_id, metric)
        self.rule = rule
        self.run = 0  # length of the current streak past the outer level
        self.bad_run = 0  # length of the current streak past the bad level
        self.start_step = 0
        self.worst = math.nan

    def update(self, steps: np.ndarray, values: np.ndarray, g: np.ndarray) -> list[Finding]:
        rule = self.rule
        levels = [lvl for lvl in (rule.warn, rule.bad) if lvl is not None]
        if not levels:
            return []
        finite = np.isfinite(values)
        with np.errstate(invalid="ignore"):
            past_outer = finite & ((values < max(levels)) if rule.lower_is_worse else (values > min(levels)))
            past_bad = (
                finite & ((values < rule.bad) if rule.lower_is_worse else (values > rule.bad))
                if rule.bad is not None
                else np.zeros_like(finite)
            )
        out: list[Finding] = []
        starts, ends = _true_runs(past_outer)
        n = len(values)
        # The carried streak ends at once if this chunk does not start past the level.
        if self.run and (len(starts) == 0 or starts[0] != 0):
            out += self._close()
        for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
            carried = self.run if a == 0 else 0
            if not carried:
                self.start_step, self.worst, self.bad_run = int(steps[a]), math.nan, 0
            length = carried + (b - a + 1)
            bad_at = self._bad_reached(past_bad[a : b + 1])
            if length >= rule.for_steps:
                seg = values[a : b + 1]
                worst = float(seg.min() if rule.lower_is_worse else seg.max())
                if not math.isnan(self.worst):
                    worst = min(self.worst, worst) if rule.lower_is_worse else max(self.worst, worst)
                self.worst = worst
                if self.open is None:
                    detected = int(steps[max(a, a + rule.for_steps - carried - 1)])
                    self.open = self._open("bad" if bad_at is not None else "warn", detected)
                    out.append(self.open)
                elif bad_at is not None and self.open.severity != "bad":
                    self.open = replace(self.open, severity="bad", message=self._text("bad", "+"))
                    out.append(self.open)
                self.open = replace(self.open, step_last=int(steps[b]), value=self.worst)
            self.run = length
            if b < n - 1:  # the streak ended inside this chunk
                out += self._close()
        return out

    def _bad_reached(self, past_bad: np.ndarray) -> int | None:
        """Index in this segment where a bad-level streak reaches ``for_steps`` (carrying the
        streak from earlier chunks), else None."""
        need = self.rule.for_steps
        starts, ends = _true_runs(past_bad)
        hit = None
        for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
            carried = self.bad_run if a == 0 else 0
            length = carried + b - a + 1
            if length >= need and hit is None:
                hit = max(a, a + need - carried - 1)
            self.bad_run = length
        if len(ends) == 0 or ends[-1] != len(past_bad) - 1:
            self.bad_run = 0
        return hit

    def _text(self, severity: str, steps: str) -> str:
        rule = self.rule
        level = rule.bad if severity == "bad" else (rule.warn if rule.warn is not None else rule.bad)
        side = "below" if rule.lower_is_worse else "above"
        worst = f"worst {self.worst:.4g}; " if math.isfinite(self.worst) else ""
        return (
            f"{self.metric} {side} {level:g} for {rule.for_steps}{steps} steps from step "
            f"{self.start_step} ({worst}{rule.source or 'configured'})"
            if steps == "+"
            else f"{self.metric} {side} {level:g} for {steps} steps from step {self.start_step} "
            f"({worst}{rule.source or 'configured'})"
        )

    def _open(self, severity: str, detected: int) -> Finding:
        return self._finding(
            step_first=self.start_step,
            step_last=detected,
            severity=severity,
            value=self.worst,
            message=self._text(severity, "+"),
            step_detected=detected,
            state="open",
        )

    def _close(self) -> list[Finding]:
        self.run, self.bad_run = 0, 0
        if self.open is None:
            return []
        f = self.open
        closed = replace(
            f, state="closed", message=self._text(f.severity, str(f.step_last - f.step_first + 1))
        )
        self.open = None
        return [closed]


class Shift(Detector):
    """One-sided CUSUM of a metric's badness against a baseline: the run's own first ``warmup``
    steps, or a reference run's whole series. Catches a raised floor no absolute level sees (a bf16
    head: 4x the reference's |dlogp|, far under the field's thresholds) and a slow creep.

    Increments are ``clip((g - centre) / long_run_sigma, -clip, clip) - k``, the echoes of a heavy
    innovation taken off first (``_without_echoes``); it fires when the sum
    passes ``h`` and the recent median is at least ``min_ratio`` times the baseline, squared for a
    metric quadratic in the log-ratio such as k3 (a shift too
    small to matter is not reported however sure it is). One finding per excursion, from where the
    sum left zero to where it returned.
    """

    name = "shift"

    def __init__(
        self,
        run_id: str,
        metric: str,
        spec: MetricSpec,
        *,
        baseline: Baseline | None = None,
        warmup: int = 200,
        k: float = 1.0,
        clip: float = CLIP_SIGMA,
        arl0: float = DEFAULT_ARL0,
        min_ratio: float = 1.5,
        min_sigma: float = math.log(1.05),
        recent: int = 7,
    ) -> None:
        super().__init__(run_id, metric)
        self.spec = spec
        self.name = "shift" if baseline is None else "reference"
        self.baseline = baseline
        self.warmup = warmup
        self.buffer: list[float] = []
        self.k, self.clip, self.min_ratio, self.min_sigma = k, clip, min_ratio, min_sigma
        self.recent = recent
        self.tail: list[float] = []  # the last ``recent - 1`` points, for the level gate
        self.h = cusum_limit(k, arl0)
        self.history: list[float] = []  # own baseline: the points seen, until the last refinement
        self.next_refine: int | None = None  # own baseline: when the scale is next re-estimated
        # Against a reference run the sum starts at h / 2 (Lucas and Crosier's fast initial response):
        # a run compared with another has no healthy stretch of its own behind it, and a fault that
        # is there from the first step (a bf16 head) is the very thing this comparison is for. On a
        # healthy run the head start drains at k per step, so it costs almost nothing in false
        # alarms and brings a 4x floor's detection from step 5-6 to step 1-3.
        self.c = self.h / 2 if baseline is not None else 0.0  # cumulative sum of increments
        self.m = 0.0  # its running minimum (S = c - m)
        self.seg_first: int | None = None  # step where the current excursion began (None: the first seen)
        self.seg_sum = 0.0  # sum of g over the current excursion
        self.seg_n = 0
        self.x_last = 0.0  # the last excess seen, for the next point's innovation
        self.outlier = 0.0  # the part of it past the innovation clip, echoes included

    def update(self, steps: np.ndarray, values: np.ndarray, g: np.ndarray) -> list[Finding]:
        keep = np.isfinite(g)
        steps, g = steps[keep], g[keep]
        if self.baseline is None:
            take = max(0, min(self.warmup - len(self.buffer), len(g)))
            self.buffer += g[:take].tolist()
            steps, g = steps[take:], g[take:]
            if len(self.buffer) < self.warmup:
                return []
            early = np.asarray(self.buffer)
            self.baseline = Baseline.of(early, "own", self.min_sigma).with_offset(early)
            self.history, self.next_refine = self.buffer, 2 * self.warmup
            self.buffer = []
        out: list[Finding] = []
        # The own baseline's scale and correlation are refined at 2 and 4 times the warm-up,
        # from every point seen so far (the centre stays the early one): 200 autocorrelated points
        # pin a median well but a long-run sigma poorly. Chunks are split at those points, so the
        # answer does not depend on how the points arrive.
        while self.next_refine is not None and len(g):
            room = self.next_refine - len(self.history)
            out += self._judge(steps[:room], g[:room])
            self.history += g[:room].tolist()
            steps, g = steps[room:], g[room:]
            if len(self.history) >= self.next_refine:
                seen = np.asarray(self.history)
                refined = Baseline.of(seen, "own", self.min_sigma, detrend=True)
                refined = replace(refined, center=self.baseline.center)
                self.baseline = refined.with_offset(_detrended(seen, refined.center))
                last = self.next_refine >= 4 * self.warmup
                self.next_refine = None if last else 2 * self.next_refine
                if last:
                    self.history = []
        return out + self._judge(steps, g)

    def _judge(self, steps: np.ndarray, g: np.ndarray) -> list[Finding]:
        if len(g) == 0:
            return []
        base = self.baseline
        assert base is not None
        if self.seg_first is None:
            self.seg_first = int(steps[0])
        g = g - base.center_at(steps)  # from here on, the excess over the baseline (log ratio)
        z = np.clip(self._without_echoes(g) / base.long_run_sigma, -self.clip, self.clip)
        z = z - base.offset - self.k
        c = self.c + np.cumsum(z)
        m = np.minimum(self.m, np.minimum.accumulate(c))
        s = c - m
        n = len(g)
        carried = self.c - self.m > 0  # an excursion was running when the chunk began
        # Excursions are runs of s > 0 between zeros; excursion j (0: the one the chunk starts in)
        # spans (zeros[j-1], zeros[j]). Only those that fire, or the carried open one, get Python.
        zeros = np.flatnonzero(s <= 0)
        gsum = np.cumsum(g)

        def seg_mean(i: int) -> float:
            """Mean of g over point i's excursion so far (carrying the sums of earlier chunks)."""
            j = int(np.searchsorted(zeros, i, side="right")) - 1
            if j >= 0:
                return float(gsum[i] - gsum[zeros[j]]) / (i - int(zeros[j]))
            total, count = float(gsum[i]), i + 1
            if carried:
                total, count = total + self.seg_sum, count + self.seg_n
            return total / count

        fire = np.flatnonzero(s > self.h)
        if len(fire):
            # The level now, robustly: the median of the last ``recent`` points must be at least
            # ``min_ratio`` times the baseline (the effect-size gate).
            ext = np.concatenate((np.asarray(self.tail, dtype=np.float64), g))
            w = min(self.recent, len(ext))
            offset = len(ext) - n
            windows = np.lib.stride_tricks.sliding_window_view(ext, w)
            ends = fire + offset  # point i of this chunk is ext[i + offset]
            full = ends >= w - 1  # points with a whole window behind them (all but the first few)
            level = np.empty(len(fire))
            level[full] = np.median(windows[ends[full] - w + 1], axis=1)
            for j in np.flatnonzero(~full).tolist():
                level[j] = np.median(ext[: ends[j] + 1])
            fire = fire[level >= self.spec.power * math.log(self.min_ratio)]
        keep_tail = self.recent - 1
        self.tail = (self.tail + g[-keep_tail:].tolist())[-keep_tail:] if keep_tail > 0 else []
        out: list[Finding] = []
        seg_ids = set(np.searchsorted(zeros, fire, side="right").tolist())
        if self.open is not None:
            seg_ids.add(0)
        open_id = None if (len(zeros) and zeros[-1] == n - 1) else len(zeros)
        for seg in sorted(seg_ids):
            a = 0 if seg == 0 else int(zeros[seg - 1]) + 1
            b = int(zeros[seg]) - 1 if seg < len(zeros) else n - 1
            if b < a:  # the carried excursion ended on this chunk's first point
                out.append(self._close())
                continue
            cont = seg == 0 and carried
            first = int(self.seg_first) if cont else int(steps[a])
            if self.open is None:
                fired_at = int(fire[np.searchsorted(fire, a)])
                self.open = self._open(first, int(steps[fired_at]), seg_mean(fired_at))
                out.append(self.open)
            severity = self.open.severity
            self.open = self._update(self.open, int(steps[b]), seg_mean(b))
            if seg != open_id:
                out.append(self._close())
            elif self.open.severity != severity:  # worsened (warn to bad) while still open
                out.append(self.open)
        # Carry the running excursion's sums into the next chunk.
        if open_id is not None:
            a = 0 if open_id == 0 else int(zeros[open_id - 1]) + 1
            cont = open_id == 0 and carried
            self.seg_first = self.seg_first if cont else int(steps[a])
            base_sum = float(gsum[a - 1]) if a > 0 else 0.0
            self.seg_sum = float(gsum[-1]) - base_sum + (self.seg_sum if cont else 0.0)
            self.seg_n = (n - a) + (self.seg_n if cont else 0)
        else:
            self.seg_sum, self.seg_n = 0.0, 0
        self.c, self.m = float(c[-1]), float(m[-1])
        # Keep the sums small over a million steps (only their difference matters).
        self.c, self.m = self.c - self.m, 0.0
        return out

    def _without_echoes(self, x: np.ndarray) -> np.ndarray:
        """The excess ``x`` less the echoes of heavy innovations, for the sum (the gate and the
        reported level keep the raw points).

        On AR(1) noise one heavy-tailed innovation (a Student-t(5) draw of 10-20 sigma) comes back
        ``rho``, ``rho^2``, ... times as large on the points after it. Clipping each point at
        ``clip`` long-run sigmas bounds the point, not its echoes: at rho 0.5 a point clipped to 5
        and echoes of about 3.6, 1.8 and 0.9 sum to some 7 past ``k``, over ``h`` (6.1) on their
        own, which made 0.13 false shifts per 10,000 steps of t(5) noise. So the innovation
        ``x_t - rho x_{t-1}`` is clipped at ``clip`` of its own sigma too: what lies past that is
        an outlier, whose echoes (an AR(1) filter of the outlier parts) are taken off the points
        that follow, and one innovation adds about what one point of independent noise can. A
        point that did not fall from the one before is no echo (a level shift is a big innovation
        that stays up), so at most that fall is taken off, and a step change sums as fast as
        before. Upward only: the sum is one-sided, and a drop's echoes only pull it to zero.
        """
        base = self.baseline
        assert base is not None
        rho = base.rho
        prev = np.concatenate(([self.x_last], x[:-1]))
        self.x_last = float(x[-1])
        past = x - rho * prev  # the innovation, then its part past the clip
        past -= self.clip * base.sigma * math.sqrt(1 - rho * rho)
        np.maximum(past, 0.0, out=past)
        if self.outlier == 0.0 and not past.any():
            return x  # no heavy innovation in sight (on Gaussian noise, nearly always)
        outlier = lfilter([1.0], [1.0, -rho], past, zi=[rho * self.outlier])[0]
        echo = np.concatenate(([self.outlier], outlier[:-1]))
        echo *= rho
        self.outlier = float(outlier[-1])
        fall = prev - x
        np.maximum(fall, 0.0, out=fall)
        return x - np.minimum(echo, fall, out=echo)

    def _describe(self, first: int, last: int, excess: float) -> tuple[str, float]:
        """The message for an excursion whose mean excess over the baseline is ``excess`` (log)."""
        base = self.baseline
        assert base is not None
        center = float(base.center_at(np.asarray(last)))
        ratio = math.exp(excess)  # in the metric's own units (k3 is quadratic in dlogp)
        was, now = self.spec.value_of(center), self.spec.value_of(center + excess)
        digits = ".6g" if self.spec.transform == "log1m" else ".3g"  # 0.99998, not 1
        was, now = format(was, digits), format(now, digits)
        if base.source == "own":
            where = f"its own baseline {was} (median of its first {self.warmup} steps)"
        elif base.curve:
            where = f"the reference run {base.source}'s highest level so far ({was})"
        else:
            where = f"the reference run {base.source}'s {was}"
        return (
            f"{self.metric} {self.spec.label} to {now} over steps {first}-{last}: {ratio:.1f}x {where}",
            ratio,
        )

    def _open(self, first: int, detected: int, excess: float) -> Finding:
        text, ratio = self._describe(first, detected, excess)
        base = self.baseline
        assert base is not None
        return self._finding(
            step_first=first,
            step_last=detected,
            severity=self._severity(ratio),
            value=self.spec.value_of(float(base.center_at(np.asarray(detected))) + excess),
            message=f"{text}; CUSUM passed {self.h:.1f} sigma at step {detected}",
            step_detected=detected,
            state="open",
        )

    def _severity(self, ratio: float) -> str:
        """Bad when a reference run's level is passed 3x (9x for a quadratic metric), else warn."""
        assert self.baseline is not None
        return "bad" if self.baseline.source != "own" and ratio >= 3**self.spec.power else "warn"

    def _update(self, f: Finding, last: int, excess: float) -> Finding:
        """``f`` extended to ``last``; its severity only ever rises (a finding opened on the first
        steps of a fault, before the excursion's mean has grown to 3x, turns bad when it does)."""
        text, ratio = self._describe(f.step_first, last, excess)
        base = self.baseline
        assert base is not None
        return replace(
            f,
            severity="bad" if "bad" in (f.severity, self._severity(ratio)) else "warn",
            step_last=last,
            value=self.spec.value_of(float(base.center_at(np.asarray(last))) + excess),
            message=f"{text}; CUSUM passed {self.h:.1f} sigma at step {f.step_detected}",
        )

    def _close(self) -> Finding:
        assert self.open is not None
        closed = replace(self.open, state="closed")
        self.open = None
        return closed


def _tail_limit(resid: np.ndarray, arl0: float, fraction: float = 0.1, n: int | None = None) -> float:
    """The residual passed once in ``arl0`` points, from the exceedances of the top ``fraction``
    (peaks over threshold), fitted by a generalised Pareto tail.

    The shape ``xi`` comes from probability-weighted moments (Hosking & Wallis 1987): 0 is an
    exponential tail on the log scale (a power-law tail of the metric itself), and ``xi > 0`` a
    heavier one, Student-t noise of the log values, which an exponential extrapolation to one point
    in ``arl0`` placed far too low (0.1-0.3 false spikes per 10,000 steps on t(5) noise). ``xi`` is
    kept in [0, 0.25]: a bounded tail is extrapolated as an exponential one, which is conservative,
    and a tail heavier than Student-t(4) noise (the stress case t(3)) as t(4), so that 20
    exceedances of a short warm-up do not put the limit out of reach (e^94 at 1.645 standard errors).
    ``resid`` may be only the largest residuals of ``n`` (at least ``fraction * n + 1`` of them).
    """
    k = int(fraction * (len(resid) if n is None else n))
    if k < 3 or len(resid) <= k:
        return -math.inf
    top = -np.partition(-np.asarray(resid, dtype=np.float64), k)[: k + 1]
    u = float(top[k])  # the (k+1)-th largest: the threshold the top k exceed
    y = np.sort(top[:k] - u)
    a0 = float(np.mean(y))
    a1 = float(np.mean((1 - (np.arange(k) + 0.65) / k) * y))
    xi = 2 - a0 / (a0 - 2 * a1) if a0 - 2 * a1 > 0 else 0.25
    # A tail estimated too light is what makes a spike detector cry wolf, and the extrapolation to
    # one point in a million is steep in xi: take the shape's upper 95% bound (its standard error
    # is about 1.2 / sqrt(k) for xi in [0, 0.3]: +-0.27 from the warm-up's 20 exceedances, +-0.07
    # from 320), and the mean excess's upper 2-sigma bound (known to about 1/sqrt(k)).
    xi = min(max(xi, 0.0) + 1.645 * 1.2 / math.sqrt(k), 0.25)
    sigma = a0 * (1 - xi) * (1 + 2 / math.sqrt(k))
    m = fraction * arl0
    return u + (sigma * math.log(m) if xi < 1e-9 else sigma * (m**xi - 1) / xi)


class Jump(Detector):
    """Residuals from an EWMA forecast, in units of the EWMA of absolute residuals.

    ``isolated=True`` (spikes on mismatch metrics): a point far past the forecast whose successor
    is not, so a level shift (``Shift``'s business) is not reported as a spike; decided one step
    late. ``isolated=False`` (jumps on metrics that trend by design, KL or entropy): a trend alone
    never fires, a sudden step does. ``min_log_ratio`` also asks a spike on a log scale to be that
    large in absolute terms (log 3: three times the level).
    """

    def __init__(
        self,
        run_id: str,
        metric: str,
        spec: MetricSpec,
        *,
        isolated: bool,
        alpha: float = 0.05,
        scale_alpha: float = 0.02,
        warmup: int = 30,
        arl0: float = DEFAULT_ARL0,
        min_log_ratio: float | None = math.log(3.0),
        z: float | None = None,
        window: int = 50,
        past_max_log_ratio: float = math.log(2.0),
    ) -> None:
        super().__init__(run_id, metric)
        self.spec = spec
        self.name = "spike" if isolated else "jump"
        self.isolated = isolated
        self.alpha, self.scale_alpha = alpha, scale_alpha
        self.warmup = warmup
        self.direction = spec.direction
        self.z = z if z is not None else jump_limit(arl0, spec.direction == "both")
        self.min_log_ratio = min_log_ratio
        self.buffer: list[float] = []
        self.level = math.nan
        self.scale = math.nan
        self.window, self.past_max_log_ratio = window, past_max_log_ratio
        self.arl0 = arl0
        self.tail_limit = -math.inf  # the residual a spike must pass, from the warm-up's tail
        # Spikes: the tail is re-fitted on the forecast residuals at 2, 4, ... 64 times the warm-up
        # (a shape estimated from 20 exceedances is known to +-0.27, from 1,280 to +-0.03), keeping
        # only the residuals that can still be in the top tenth at the next refit; chunks are split
        # there, so the answer does not depend on how the points arrive.
        self.resid_top: list[float] = []
        self.resid_count = 0
        self.next_refine: int | None = 2 * warmup if isolated else None
        self.recent_g: list[float] = []  # the last ``window`` points on the detector scale
        self.pending: list[float] | None = None  # [step, value, score] awaiting its successor
        self.last_far = False

    def update(self, steps: np.ndarray, values: np.ndarray, g: np.ndarray) -> list[Finding]:
        keep = np.isfinite(g)
        steps, values, g = steps[keep], values[keep], g[keep]
        if math.isnan(self.level):
            take = max(0, min(self.warmup - len(self.buffer), len(g)))
            self.buffer += g[:take].tolist()
            steps, values, g = steps[take:], values[take:], g[take:]
            if len(self.buffer) < self.warmup:
                return []
            ref = np.asarray(self.buffer)
            self.level = float(np.median(ref))
            self.scale = max(float(np.mean(np.abs(ref - self.level))), 1e-12 + 1e-9 * abs(self.level))
            self.recent_g = self.buffer[-self.window :]
            if self.isolated:
                self.tail_limit = _tail_limit(ref - self.level, self.arl0)
            self.buffer = []
        out: list[Finding] = []
        while self.next_refine is not None and len(g):
            room = self.next_refine - self.warmup - self.resid_count
            out += self._judge(steps[:room], values[:room], g[:room])
            steps, values, g = steps[room:], values[room:], g[room:]
            if self.warmup + self.resid_count >= self.next_refine:
                # Never above the warm-up's limit, which already took the heaviest tail allowed: a
                # level shift inside the window fills its top tenth with the shift's residuals,
                # which are no tail of the noise.
                refit = _tail_limit(np.asarray(self.resid_top), self.arl0, n=self.resid_count)
                self.tail_limit = min(self.tail_limit, refit)
                last = self.next_refine >= 64 * self.warmup
                self.next_refine = None if last else 2 * self.next_refine
                if last:
                    self.resid_top = []
        return out + self._judge(steps, values, g)

    def _judge(self, steps: np.ndarray, values: np.ndarray, g: np.ndarray) -> list[Finding]:
        if len(g) == 0:
            return []
        a = self.alpha
        level = lfilter([a], [1.0, a - 1.0], g, zi=[(1.0 - a) * self.level])[0]
        level_before = np.concatenate(([self.level], level[:-1]))
        resid = g - level_before
        if self.next_refine is not None:
            self.resid_count += len(resid)
            keep = (self.next_refine - self.warmup) // 10 + 1
            both = np.concatenate((np.asarray(self.resid_top, dtype=np.float64), resid))
            if len(both) > keep:
                both = -np.partition(-both, keep - 1)[:keep]
            self.resid_top = both.tolist()
        b = self.scale_alpha
        scale = lfilter([b], [1.0, b - 1.0], np.abs(resid), zi=[(1.0 - b) * self.scale])[0]
        scale_before = np.concatenate(([self.scale], scale[:-1]))
        score = resid / (_MEAN_ABS_TO_SIGMA * np.maximum(scale_before, 1e-300))
        signed = {"up": score, "down": -score, "both": np.abs(score)}[self.direction]
        big = signed > self.z
        if self.min_log_ratio is not None:
            big &= np.abs(resid) >= self.min_log_ratio
        if self.isolated:
            big &= resid >= self.tail_limit
            # ... and past everything of the last ``window`` steps by ``past_max_log_ratio``: on
            # heavy-tailed noise a z-score alone fires on the tail itself. Computed for the few
            # points far from the level only.
            w = self.window
            ext = np.concatenate((np.asarray(self.recent_g, dtype=np.float64), g))
            offset = len(ext) - len(g)
            far = big.copy()  # far from the level: what makes a neighbour part of a level shift
            cand = np.flatnonzero(far)
            if len(cand):
                starts = cand + offset - w
                before = np.full(len(cand), -np.inf)
                whole = starts >= 0
                if whole.any():
                    windows = np.lib.stride_tricks.sliding_window_view(ext, w)
                    before[whole] = windows[starts[whole]].max(axis=1)
                for j in np.flatnonzero(~whole & (cand + offset > 0)).tolist():
                    before[j] = ext[: cand[j] + offset].max()
                big[cand] = g[cand] - before >= self.past_max_log_ratio
            self.recent_g = ext[-w:].tolist()
        out: list[Finding] = []
        if self.isolated:
            # A candidate is a big point after a small one; it is a spike if the next is small too.
            # The chunk's last candidate waits for the next chunk's first point.
            if self.pending is not None:
                if not far[0]:
                    out.append(self._spike(*self.pending))
                self.pending = None
            far_before = np.concatenate(([self.last_far], far[:-1]))
            far_after = np.concatenate((far[1:], [False]))
            for i in np.flatnonzero(big & ~far_before & ~far_after).tolist():
                row = (float(steps[i]), float(values[i]), float(score[i]))
                if i == len(g) - 1:
                    self.pending = list(row)
                else:
                    out.append(self._spike(*row))
            self.last_far = bool(far[-1])
        else:
            for i in np.flatnonzero(big).tolist():
                out.append(
                    self._finding(
                        step_first=int(steps[i]),
                        step_last=int(steps[i]),
                        severity="warn",
                        value=float(values[i]),
                        message=f"{self.metric} {self.spec.label} to {values[i]:.4g} at step "
                        f"{int(steps[i])}, {abs(score[i]):.1f} sigma off its usual step-to-step change "
                        f"(forecast {self.spec.value_of(level_before[i]):.4g})",
                        step_detected=int(steps[i]),
                    )
                )
        self.level, self.scale = float(level[-1]), float(scale[-1])
        return out

    def _spike(self, step: float, value: float, score: float) -> Finding:
        return self._finding(
            step_first=int(step),
            step_last=int(step),
            severity="warn",
            value=value,
            message=f"{self.metric} spiked to {value:.4g} at step {int(step)} ({score:+.1f} sigma past its "
            f"recent level, one step only)",
            step_detected=int(step) + 1,
        )
