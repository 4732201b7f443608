"""Detection-power report: false flags per 10,000 healthy steps, detection delays, demo faults caught.

The monitor's detectors (``monitor.RunMonitor``: NaN/Inf, the field's thresholds, CUSUM shifts
against the run's own baseline and against a reference run, isolated spikes, jumps of trending
metrics) are judged the way a statistician would judge an alarm:

1. False flags on long healthy series, per metric and per detector, counted as findings (one per
   excursion, as the ``findings`` table records them) per 10,000 steps, with a 95% Poisson upper
   bound. Two sources of healthy series:

   a. the demo's healthy runs (``reference`` and ``all-fixed`` of each engine and seed, and the
      long torch run if present) stretched to ``--steps`` steps each by a stationary block
      bootstrap (geometric blocks of mean ``--block`` steps, never wrapping past the run's end).
      One index sequence per run serves every metric, so a resampled step keeps all of its
      metrics together (the cross-metric structure the detectors see). Metrics that trend by
      design (those judged by the ``jump`` detector) are resampled by their step-to-step
      differences and summed again, so a block seam is not itself a jump. Each stretched run is
      also judged against its partner healthy run (``all-fixed`` against ``reference`` and back),
      which measures the reference detector on a real 24-step (or 200-step) reference;
   b. synthetic series: the issue's own ``mismatch/k3`` = |N(0,1)| x 1e-4 i.i.d., and log-normal
      AR(1) noise (lag-one correlation 0, 0.5, 0.8; Gaussian or Student-t(5) innovations scaled to
      unit variance; standard deviation 0.25 on the log scale) on k3, |dlogp| mean, Pearson and
      ESS (the last two as ``1 - 1e-3 exp(noise)``). Student-t(3) innovations are run as a stress
      case and kept out of the goal. Each replicate also gets a reference: the baseline of an
      independent ``--ref-steps``-step healthy series of the same process.

2. Detection delay, from the change to the finding's ``step_detected``, of step changes of 2x, 5x
   and 10x the baseline (on k3 and |dlogp|, and on ``1 - x`` for Pearson and ESS) at step
   ``--change-at`` (well past the 200-step own-baseline warm-up), and of slow creeps (the level
   growing linearly to 2x over 500 and over 2,000 steps, then staying there), on AR(1) rho = 0.5
   noise, Gaussian and t(5), over ``--delay-seeds`` seeds; judged on the own baseline only and with
   a reference series as well.

3. The demo scenarios of both engines over every seed: each fault flagged within 3 steps of its
   onset (step 0, or the engine restart of ``flag-change``), ``reference`` and ``all-fixed`` with no
   finding. Each run is judged by ``monitor.detect_run`` against the same seed's reference run.

``python -m bench.detection --out bench/results/detection.md [--json PATH] [--data DIR]``.
Without ``--data`` the demo stores are generated first (``python -m collectors.demo`` per engine
and seed, in subprocesses, into a temporary directory): minutes, the vLLM ones need the vllm extra.
"""

from __future__ import annotations

import argparse
import functools
import math
import statistics
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy.signal import lfilter
from scipy.stats import chi2

from bench import _demo_stores, _report
from logprobe import monitor, storage

DETECTORS = ("threshold", "shift", "reference", "spike", "jump", "nonfinite")
GOAL_PER_10K = 0.1  # false flags per metric per 10,000 healthy steps
WITHIN = 3  # a demo fault must be flagged within this many steps of its onset
HEALTHY_SCENARIOS = ("reference", "all-fixed")
FAULT_SCENARIOS = ("raw-logprobs", "prefix-cache-no-reset", "inflight-update", "bf16-lm-head", "flag-change")
ONSET = {"flag-change": 12}  # the engine restart; every other fault is on from step 0
ENGINES = ("torch", "vllm")
LOG_SD = 0.25  # standard deviation of the synthetic noise on the log scale

# (metric, baseline level of its badness, whether the value is 1 - badness)
SYNTH_METRICS = (
    ("mismatch/k3", 1e-4, False),
    ("mismatch/abs_logp_diff_mean", 3e-3, False),
    ("mismatch/prob_pearson", 1e-3, True),
    ("mismatch/ess", 1e-3, True),
)


# ----------------------------------------------------------------------------- small helpers


def rate(count: int, steps: int) -> float:
    return 1e4 * count / steps if steps else math.nan


def upper95(count: int, steps: int) -> float:
    """Two-sided 95% Poisson upper bound of a rate per 10,000 steps (Garwood)."""
    return 1e4 * float(chi2.ppf(0.975, 2 * count + 2)) / 2 / steps if steps else math.nan


def fmt_rate(x: float) -> str:
    if math.isnan(x):
        return "n/a"
    return "0" if x == 0 else (f"{x:.3f}" if x < 10 else f"{x:.0f}")


@dataclass
class Tally:
    """False flags per (metric, detector) over some number of healthy steps per metric."""

    steps: Counter[str] = field(default_factory=Counter)  # steps judged, per metric
    flags: Counter[tuple[str, str]] = field(default_factory=Counter)  # (metric, detector) -> findings
    runs: Counter[str] = field(default_factory=Counter)  # series judged, per metric
    ref_runs: Counter[str] = field(default_factory=Counter)  # series judged with a reference baseline
    runs_with_ref_flag: Counter[str] = field(default_factory=Counter)

    def add(self, metric: str, steps: int, findings: Sequence[monitor.Finding], has_ref: bool) -> None:
        self.steps[metric] += steps
        self.runs[metric] += 1
        self.ref_runs[metric] += int(has_ref)
        for f in findings:
            self.flags[(f.metric, f.detector)] += 1
        if any(f.detector == "reference" for f in findings):
            self.runs_with_ref_flag[metric] += 1

    def metric_total(self, metric: str) -> int:
        return sum(n for (m, _), n in self.flags.items() if m == metric)

    def as_json(self) -> dict[str, Any]:
        out = {}
        for metric in sorted(self.steps):
            total = self.metric_total(metric)
            out[metric] = {
                "steps": self.steps[metric],
                "series": self.runs[metric],
                "flags": total,
                "per_10k": rate(total, self.steps[metric]),
                "per_10k_upper95": upper95(total, self.steps[metric]),
                "by_detector_per_10k": {
                    d: rate(self.flags[(metric, d)], self.steps[metric])
                    for d in DETECTORS
                    if self.flags[(metric, d)]
                },
                "series_with_reference": self.ref_runs[metric],
                "series_with_reference_flag": self.runs_with_ref_flag[metric],
            }
        return out

    def worst(self) -> tuple[str, str, float]:
        """(metric, detector, rate per 10k) of the largest per-detector rate; ("", "", 0) if none."""
        best = ("", "", 0.0)
        for (metric, det), n in self.flags.items():
            r = rate(n, self.steps[metric])
            if r > best[2]:
                best = (metric, det, r)
        return best

    def worst_metric(self) -> tuple[str, float]:
        rates = [(m, rate(self.metric_total(m), self.steps[m])) for m in self.steps]
        return max(rates, key=lambda x: x[1], default=("", 0.0))


def trending(metric: str) -> bool:
    """Metrics that trend by design (judged by ``jump``): their bootstrap replays a run's early
    collapse at random times, which is no healthy series, so they are shown but not judged there."""
    spec = monitor.spec_for(metric)
    return spec is not None and spec.jump


def judged(metric: str) -> bool:
    """Metrics some detector beyond NaN/Inf looks at."""
    return monitor.spec_for(metric) is not None or metric in monitor.DEFAULT_THRESHOLDS


# ----------------------------------------------------------------------------- demo data


def generate(data: Path, engines: Sequence[str], seeds: Sequence[int], long_steps: int) -> list[str]:
    """The demo into ``data`` laid out like ``/work/data``, plus one long torch pair of the healthy
    scenarios; returns notes on what was skipped."""
    notes = _demo_stores.generate(data, engines, seeds)
    if long_steps and "torch" in engines:
        args = [*HEALTHY_SCENARIOS, "--engine", "torch", "--steps", str(long_steps), "--seed", "7"]
        notes += _demo_stores.run_demo(data, "torch-long", args)
    return notes


def run_series(store: storage.Store, run_id: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """A run's steps and, per metric, its values at those steps (NaN where a metric is missing)."""
    t = monitor.metric_rows(store, run_id)
    names = np.asarray(t.column("name").to_pylist(), dtype=object)
    steps = t.column("step").to_numpy()
    values = t.column("value").to_numpy(zero_copy_only=False).astype(np.float64)
    grid = np.unique(steps)
    out = {}
    for name in dict.fromkeys(names.tolist()):
        sel = names == name
        col = np.full(len(grid), np.nan)
        col[np.searchsorted(grid, steps[sel])] = values[sel]
        out[str(name)] = col
    return grid, out


def run_ids(store: storage.Store) -> set[str]:
    return {r["run_id"] for r in store.sql("SELECT DISTINCT run_id FROM metrics").to_pylist()}


# ----------------------------------------------------------------------------- 1a: bootstrap


def bootstrap_indices(n: int, length: int, block: float, rng: np.random.Generator) -> np.ndarray:
    """Stationary bootstrap of positions 0..n-1: blocks of geometric length (mean ``block``) from
    uniform starts, cut at the series' end rather than wrapped round it."""
    parts, total = [], 0
    while total < length:
        k = max(16, int(2 * (length - total) / min(block, n)) + 16)
        starts = rng.integers(0, n, k)
        lens = np.minimum(rng.geometric(1.0 / block, k), n - starts)
        ends = np.cumsum(lens)
        idx = np.arange(int(ends[-1])) - np.repeat(ends - lens, lens) + np.repeat(starts, lens)
        parts.append(idx)
        total += len(idx)
    return np.concatenate(parts)[:length]


def stretch(series: dict[str, np.ndarray], length: int, block: float, rng: np.random.Generator) -> dict:
    """Every metric of one run resampled with one index sequence. Positions index steps 1..n-1:
    a level metric takes its value there, a trending one its change from the step before, summed."""
    n = len(next(iter(series.values())))
    idx = bootstrap_indices(n - 1, length, block, rng) + 1
    out = {}
    for metric, x in series.items():
        spec = monitor.spec_for(metric)
        if spec is not None and spec.jump:
            d = np.diff(x)
            d = np.where(np.isfinite(d), d, 0.0)
            out[metric] = x[0] + np.cumsum(d[idx - 1])
        else:
            out[metric] = x[idx]
    return out


def judge_series(
    run_id: str,
    series: dict[str, np.ndarray],
    reference: monitor.Reference | None,
    tally: Tally,
) -> None:
    mon = monitor.RunMonitor(run_id, reference=reference)
    for metric, values in series.items():
        if not judged(metric):
            continue
        # NaN here is a step the metric was not logged at (``run_series``'s grid), not a value.
        steps = np.flatnonzero(~np.isnan(values))
        mon.update(metric, steps, values[steps])
    by_metric = defaultdict(list)
    for f in mon.findings():
        by_metric[f.metric].append(f)
    for metric, values in series.items():
        if judged(metric):
            has_ref = reference is not None and metric in reference.baselines
            tally.add(metric, int(np.count_nonzero(~np.isnan(values))), by_metric.get(metric, []), has_ref)


def healthy_bootstrap(stores: dict[str, storage.Store], length: int, block: float, seed: int) -> dict:
    """1a: each healthy run stretched and judged against its partner healthy run."""
    groups: dict[str, Tally] = {}
    runs = []
    rng = np.random.default_rng(seed)
    for name, store in stores.items():
        engine = name.split("-")[0]
        present = run_ids(store)
        ids = [f"demo-{engine}-{s}" for s in HEALTHY_SCENARIOS if f"demo-{engine}-{s}" in present]
        group = "torch-long" if name == "torch-long" else f"{engine} (24 steps)"
        tally = groups.setdefault(group, Tally())
        for run_id in ids:
            steps, series = run_series(store, run_id)
            if len(steps) < 3:
                continue
            partner = [r for r in ids if r != run_id]
            ref = monitor.load_reference(store, partner[0]) if partner else None
            judge_series(run_id, stretch(series, length, block, rng), ref, tally)
            x = series.get(EFFECT_METRIC)
            zero = "" if x is None else f", |dlogp| mean exactly 0 on {np.mean(x == 0):.0%} of them"
            runs.append(f"{name}/{run_id} ({len(steps)} steps{zero})")
    total = Tally()
    for t in groups.values():
        total.steps.update(t.steps)
        total.flags.update(t.flags)
        total.runs.update(t.runs)
        total.ref_runs.update(t.ref_runs)
        total.runs_with_ref_flag.update(t.runs_with_ref_flag)
    return {"groups": groups, "total": total, "runs": runs}


# ----------------------------------------------------------------------------- 1b, 2: synthetic


def ar1(rng: np.random.Generator, shape: tuple[int, int], rho: float, df: float | None) -> np.ndarray:
    """Unit-variance AR(1) rows with Gaussian (``df`` None) or Student-t innovations, stationary."""
    rows, n = shape
    burn = 0 if rho == 0 else int(np.ceil(np.log(1e-6) / np.log(rho)))
    if df is None:
        e = rng.standard_normal((rows, n + burn))
    else:
        e = rng.standard_t(df, (rows, n + burn)) / math.sqrt(df / (df - 2))
    if rho == 0:
        return e
    return lfilter([math.sqrt(1 - rho * rho)], [1.0, -rho], e, axis=1)[:, burn:]


def to_values(badness: np.ndarray, one_minus: bool) -> np.ndarray:
    return 1.0 - badness if one_minus else badness


@dataclass(frozen=True)
class Case:
    label: str
    rho: float
    df: float | None  # None: Gaussian
    stress: bool = False
    iid_abs_normal: bool = False  # the issue's own |N(0,1)| x 1e-4 case (k3 only)


def synthetic_cases() -> list[Case]:
    cases = [Case("k3 = abs(N(0,1)) x 1e-4, i.i.d.", 0.0, None, iid_abs_normal=True)]
    for df, name, stress in ((None, "Gaussian", False), (5.0, "t(5)", False), (3.0, "t(3), stress", True)):
        for rho in (0.0, 0.5, 0.8):
            cases.append(Case(f"log-normal AR(1), rho {rho:g}, {name}", rho, df, stress))
    return cases


def synthetic_false_flags(
    cases: Sequence[Case], replicates: int, length: int, ref_steps: int, seed: int
) -> dict[str, Tally]:
    out = {}
    for ci, case in enumerate(cases):
        rng = np.random.default_rng([seed, ci])
        tally = Tally()
        metrics = SYNTH_METRICS[:1] if case.iid_abs_normal else SYNTH_METRICS
        for metric, level, one_minus in metrics:
            if case.iid_abs_normal:
                bad = level * np.abs(rng.standard_normal((replicates, length + ref_steps)))
            else:
                bad = level * np.exp(LOG_SD * ar1(rng, (replicates, length + ref_steps), case.rho, case.df))
            values = to_values(bad, one_minus)
            for r in range(replicates):
                ref = monitor.Reference.of_series("ref", {metric: values[r, length:]})
                judge_series(f"syn-{r}", {metric: values[r, :length]}, ref, tally)
        out[case.label] = tally
    return out


CHANGES = (
    ("step 2x", "step", 2.0),
    ("step 5x", "step", 5.0),
    ("step 10x", "step", 10.0),
    ("creep to 2x over 500", "creep", 500),
    ("creep to 2x over 2000", "creep", 2000),
)
DELAY_NOISE = (("AR(1) rho 0.5, Gaussian", 0.5, None), ("AR(1) rho 0.5, t(5)", 0.5, 5.0))
STEP_HORIZON = 500  # steps after a step change the series goes on
CREEP_TAIL = 1000  # steps after a creep reaches 2x


def factor(kind: str, size: float, n: int, at: int) -> np.ndarray:
    t = np.arange(n, dtype=np.float64) - at
    if kind == "step":
        return np.where(t >= 0, size, 1.0)
    return 1.0 + np.clip(t / size, 0.0, 1.0)


def delays(change_at: int, seeds: int, ref_steps: int, seed: int) -> dict[str, Any]:
    """2: per (noise, change, metric, with/without reference): the delay of each seed."""
    out: dict[str, Any] = {}
    for ni, (noise, rho, df) in enumerate(DELAY_NOISE):
        for ci, (change, kind, size) in enumerate(CHANGES):
            n = change_at + (STEP_HORIZON if kind == "step" else int(size) + CREEP_TAIL)
            f = factor(kind, size, n, change_at)
            for mi, (metric, level, one_minus) in enumerate(SYNTH_METRICS):
                rng = np.random.default_rng([seed, 1000 + ni, ci, mi])
                u = ar1(rng, (seeds, n + ref_steps), rho, df)
                bad = level * np.exp(LOG_SD * u)
                for with_ref in (False, True):
                    cell: dict[str, Any] = {"delays": [], "detectors": Counter(), "pre_change_flags": 0}
                    for s in range(seeds):
                        values = to_values(bad[s, :n] * f, one_minus)
                        ref = None
                        if with_ref:
                            ref_values = to_values(bad[s, n:], one_minus)
                            ref = monitor.Reference.of_series("ref", {metric: ref_values})
                        found = monitor.detect("d", metric, np.arange(n), values, reference=ref)
                        det = [f_ for f_ in found if _detected(f_) >= change_at]
                        cell["pre_change_flags"] += len(found) - len(det)
                        if det:
                            first = min(det, key=lambda f_: (_detected(f_), DETECTORS.index(f_.detector)))
                            cell["delays"].append(_detected(first) - change_at)
                            cell["detectors"][first.detector] += 1
                        else:
                            cell["delays"].append(None)
                    key = f"{noise} | {change} | {metric} | {'reference' if with_ref else 'own baseline'}"
                    out[key] = _delay_summary(cell, seeds, n - change_at)
    return out


def _detected(f: monitor.Finding) -> int:
    return f.step_first if f.step_detected is None else f.step_detected


def _delay_summary(cell: dict[str, Any], seeds: int, horizon: int) -> dict[str, Any]:
    got = [d for d in cell["delays"] if d is not None]
    return {
        "seeds": seeds,
        "horizon_steps": horizon,
        "detected": len(got),
        "fraction_detected": len(got) / seeds,
        "median_delay": statistics.median(got) if got else None,
        "max_delay": max(got) if got else None,
        "first_detector": dict(cell["detectors"]),
        "pre_change_flags": cell["pre_change_flags"],
    }


# ----------------------------------------------------------------------------- 3: demo scenarios


EFFECT_METRIC = "mismatch/abs_logp_diff_mean"


def early_ratio(store: storage.Store, run_id: str, ref_id: str, onset: int) -> list[float]:
    """How big the fault is as it starts: the run's |dlogp| mean over the reference run's at the
    same step, at steps onset..onset+WITHIN (a fault that has not grown yet cannot be flagged yet)."""
    steps, series = run_series(store, run_id)
    ref_steps, ref = run_series(store, ref_id)
    if EFFECT_METRIC not in series or EFFECT_METRIC not in ref:
        return []
    out = []
    for step in range(onset, onset + WITHIN + 1):
        a, b = np.flatnonzero(steps == step), np.flatnonzero(ref_steps == step)
        if len(a) and len(b) and ref[EFFECT_METRIC][b[0]] > 0:
            out.append(round(float(series[EFFECT_METRIC][a[0]] / ref[EFFECT_METRIC][b[0]]), 2))
    return out


def demo_scenarios(stores: dict[str, storage.Store]) -> dict[str, Any]:
    """Each demo run of each seed judged against its seed's reference run."""
    per: dict[str, dict[str, Any]] = {}
    for name, store in stores.items():
        if name == "torch-long":
            continue
        engine, seed = name.split("-s")
        present = run_ids(store)
        ref_id = f"demo-{engine}-reference"
        for scenario in HEALTHY_SCENARIOS + FAULT_SCENARIOS:
            run_id = f"demo-{engine}-{scenario}"
            if run_id not in present:
                continue
            reference = None if scenario == "reference" or ref_id not in present else ref_id
            findings = monitor.detect_run(store, run_id, reference=reference)
            cell = per.setdefault(f"{scenario} | {engine}", {"runs": []})
            onset = ONSET.get(scenario, 0)
            after = [f for f in findings if _detected(f) >= onset]
            first = min(
                after, key=lambda f: (_detected(f), DETECTORS.index(f.detector), f.metric), default=None
            )
            cell["runs"].append(
                {
                    "seed": int(seed),
                    "early_ratio": early_ratio(store, run_id, ref_id, onset) if reference else [],
                    "findings": len(findings),
                    "pre_onset_findings": len(findings) - len(after),
                    "delay": None if first is None else _detected(first) - onset,
                    "first_detector": None if first is None else first.detector,
                    "first_metric": None if first is None else first.metric,
                    "first_message": None if first is None else first.message,
                    "healthy_findings": [f"{f.metric} {f.detector}: {f.message}" for f in findings]
                    if scenario in HEALTHY_SCENARIOS
                    else [],
                }
            )
    for cell in per.values():
        runs = sorted(cell["runs"], key=lambda r: r["seed"])
        cell["runs"] = runs
        cell["seeds"] = len(runs)
        cell["within"] = sum(1 for r in runs if r["delay"] is not None and r["delay"] <= WITHIN)
        cell["with_findings"] = sum(1 for r in runs if r["findings"])
        delays_ = [r["delay"] for r in runs if r["delay"] is not None]
        cell["max_delay"] = max(delays_) if delays_ else None
    return per


# ----------------------------------------------------------------------------- report


def report(res: dict[str, Any], args: argparse.Namespace) -> str:
    lines = ["# Detection power of the monitor", ""]
    lines += [
        "Written by `python -m bench.detection`; method in the script's docstring. In short: false",
        "flags are findings (one per excursion) per 10,000 healthy steps per metric, summed over its",
        "detectors, with a 95% Poisson upper bound; healthy series are (a) the demo's `reference`",
        f"and `all-fixed` runs stretched to {args.steps:,} steps each by a stationary block bootstrap",
        f"(mean block {args.block:g} steps, one index sequence for all metrics of a run, trending",
        "metrics resampled by their differences), each judged against its partner healthy run as",
        f"reference, and (b) synthetic noise, {args.replicates} replicates x {args.synthetic_steps:,} steps",
        f"per case and metric, each with a reference of {args.ref_steps} independent healthy steps.",
        f"Delays are from the change (step {args.change_at}) to the first finding's `step_detected`",
        f"over {args.delay_seeds} seeds. Demo runs are judged by `monitor.detect_run` against the",
        f"same seed's reference run. Goal: under {GOAL_PER_10K} false flags per metric per 10,000",
        f"steps; every demo fault flagged within {WITHIN} steps of its onset on every seed; no",
        "finding on a healthy demo run. Settings: `monitor.Settings()` defaults "
        f"(arl0 {monitor.Settings().arl0:,.0f}, warmup {monitor.Settings().warmup},"
        f" min_ratio {monitor.Settings().min_ratio:g}).",
        "",
    ]
    for note in res["notes"]:
        lines.append(f"- note: {note}")
    if res["notes"]:
        lines.append("")

    goals = res["goals"]
    lines += ["## Goals", ""]
    lines += _report.markdown_table(
        ["goal", "met", "worst"],
        [[g["goal"], "yes" if g["met"] else "**no**", g["worst"]] for g in goals],
    )
    lines.append("")

    # 1a
    boot = res["bootstrap"]
    lines += ["## 1a. False flags per 10,000 steps: bootstrapped healthy demo runs", ""]
    if not boot["runs"]:
        lines += ["No healthy demo runs found.", ""]
    else:
        lines.append(
            f"{len(boot['runs'])} runs stretched to {args.steps:,} steps each: "
            + ", ".join(boot["runs"])
            + "."
        )
        lines.append("")
        lines += tally_table(boot["total"])
        lines.append("")
        lines += ["Flags by group of runs (metric: detector rate per 10k; groups with none left out):", ""]
        for group, tally in boot["groups"].items():
            flagged = [
                f"`{m}` {d} {fmt_rate(rate(n, tally.steps[m]))}"
                for (m, d), n in sorted(tally.flags.items())
                if n
            ]
            steps = max(tally.steps.values(), default=0)
            lines.append(f"- {group} ({steps:,} steps per metric): " + ("; ".join(flagged) or "no flag"))
        lines.append("")

    # 1b
    lines += ["## 1b. False flags per 10,000 steps: synthetic noise", ""]
    lines += [
        "Per metric, all detectors summed (the worst detector in brackets when any flag);",
        "`ref runs` is the share of replicates whose reference detector flagged at least once.",
        "",
    ]
    syn = res["synthetic"]
    header = [
        "case",
        *[m.removeprefix("mismatch/") for m, _, _ in SYNTH_METRICS],
        "steps / metric",
        "ref runs",
    ]
    rows = []
    for label, tally in syn.items():
        row = [label]
        for metric, _, _ in SYNTH_METRICS:
            if metric not in tally.steps:
                row.append("")
                continue
            total = tally.metric_total(metric)
            cell = fmt_rate(rate(total, tally.steps[metric]))
            if total:
                det = max(DETECTORS, key=lambda d, m=metric: tally.flags[(m, d)])
                cell += f" ({det})"
            else:
                cell += f" (< {upper95(0, tally.steps[metric]):.3f})"
            row.append(cell)
        steps = max(tally.steps.values())
        flagged = sum(tally.runs_with_ref_flag.values())
        with_ref = sum(tally.ref_runs.values())
        row += [f"{steps:,}", f"{flagged}/{with_ref}"]
        rows.append(row)
    lines += _report.markdown_table(header, rows)
    lines.append("")
    lines += ["By detector: the largest rate per 10k over the case's metrics.", ""]
    rows = []
    for label, tally in syn.items():
        row = [label]
        for d in DETECTORS[:4]:
            rates = [rate(tally.flags[(m, d)], tally.steps[m]) for m in tally.steps]
            row.append(fmt_rate(max(rates, default=0.0)))
        rows.append(row)
    lines += _report.markdown_table(["case", *DETECTORS[:4]], rows)
    lines.append("")

    # 2
    lines += ["## 2. Detection delay", ""]
    lines += [
        "Cells: seeds detected / seeds, median and max steps from the change to the first finding",
        f"(step changes: within {STEP_HORIZON} steps; creeps: from the creep's start, within its",
        f"length + {CREEP_TAIL} steps), and the detector that was first most often. Pre-change flags",
        "(false alarms before the change) are counted in the JSON and listed below when any.",
        "",
    ]
    dl = res["delays"]
    for variant in ("own baseline", "reference"):
        what = "its own first 200 steps" if variant == "own baseline" else "a reference series and its own"
        lines += [f"### Judged against {what}", ""]
        rows = []
        for noise, _, _ in DELAY_NOISE:
            for change, _, _ in CHANGES:
                row = [noise, change]
                for metric, _, _ in SYNTH_METRICS:
                    c = dl[f"{noise} | {change} | {metric} | {variant}"]
                    if c["detected"]:
                        top = max(c["first_detector"], key=c["first_detector"].get)
                        row.append(
                            f"{c['detected']}/{c['seeds']}: {c['median_delay']:g} / {c['max_delay']} ({top})"
                        )
                    else:
                        row.append(f"0/{c['seeds']}")
                rows.append(row)
        lines += _report.markdown_table(
            ["noise", "change", *[m.removeprefix("mismatch/") for m, _, _ in SYNTH_METRICS]], rows
        )
        lines.append("")
    pre: Counter[str] = Counter()
    steps_before: Counter[str] = Counter()
    for key, v in dl.items():
        noise, _, _, variant = key.split(" | ")
        pre[f"{noise}, {variant}"] += v["pre_change_flags"]
        steps_before[f"{noise}, {variant}"] += v["seeds"] * args.change_at
    lines += [
        "False flags before the change (healthy steps of these same series): "
        + "; ".join(f"{k}: {n} in {steps_before[k]:,} steps" for k, n in pre.items()),
        "",
    ]

    # 3
    lines += ["## 3. Demo scenarios", ""]
    demo = res["demo"]
    if not demo:
        lines += ["No demo runs found.", ""]
    else:
        lines += [
            f"Faults: seeds flagged within {WITHIN} steps of onset / seeds (max delay; findings before",
            "the onset). Healthy runs: seeds with any finding / seeds. First detector and message: the",
            "lowest seed.",
            "",
        ]
        rows = []
        for scenario in HEALTHY_SCENARIOS + FAULT_SCENARIOS:
            row = [f"`{scenario}`" + (f" (onset {ONSET[scenario]})" if scenario in ONSET else "")]
            for engine in ENGINES:
                c = demo.get(f"{scenario} | {engine}")
                if c is None:
                    row.append("n/a")
                elif scenario in HEALTHY_SCENARIOS:
                    row.append(f"{c['with_findings']}/{c['seeds']} with findings")
                else:
                    pre_ = sum(r["pre_onset_findings"] for r in c["runs"])
                    never = sum(1 for r in c["runs"] if r["delay"] is None)
                    row.append(
                        f"{c['within']}/{c['seeds']} (max {c['max_delay']}"
                        + (f"; {never} never flagged" if never else "")
                        + (f"; {pre_} before onset" if pre_ else "")
                        + ")"
                    )
            rows.append(row)
        lines += _report.markdown_table(["scenario", *ENGINES], rows)
        lines.append("")
        for key, c in demo.items():
            r = c["runs"][0]
            if r["first_detector"] and key.split(" | ")[0] not in HEALTHY_SCENARIOS:
                lines.append(
                    f"- {key} (seed {r['seed']}, step +{r['delay']}): `{r['first_detector']}` on "
                    f"`{r['first_metric']}`: {r['first_message']}"
                )
        healthy = [
            f"{key} seed {r['seed']}: {m}"
            for key, c in demo.items()
            for r in c["runs"]
            for m in r["healthy_findings"]
        ]
        lines.append("")
        if healthy:
            lines += ["Findings on healthy demo runs:", ""] + [f"- {h}" for h in healthy]
        else:
            lines.append("No finding on any healthy demo run.")
        lines.append("")

    lines += ["## Where it misses", ""]
    misses = res["misses"]
    lines += [f"- {m}" for m in misses] if misses else ["Every goal above is met."]
    lines += ["", f"Sizes: `{' '.join(res['argv'])}`; wall time {res['seconds']:.0f} s.", ""]
    return "\n".join(lines)


def tally_table(tally: Tally) -> list[str]:
    rows = []
    for metric in sorted(tally.steps):
        total = tally.metric_total(metric)
        steps = tally.steps[metric]
        row = [f"`{metric}`" + (" (trend, not judged)" if trending(metric) else "")]
        row += [fmt_rate(rate(tally.flags[(metric, d)], steps)) for d in DETECTORS[:5]]
        mark = " **over**" if rate(total, steps) >= GOAL_PER_10K and not trending(metric) else ""
        row += [fmt_rate(rate(total, steps)) + mark, f"{upper95(total, steps):.3f}", f"{steps:,}"]
        refs = tally.ref_runs[metric]
        row.append(f"{tally.runs_with_ref_flag[metric]}/{refs}" if refs else "")
        rows.append(row)
    return _report.markdown_table(
        ["metric", *DETECTORS[:5], "all", "all, 95% upper", "steps", "ref runs flagged"], rows
    )


def judge_goals(res: dict[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
    goals, misses = [], []
    # false flags: bootstrap (all runs together) and each non-stress synthetic case
    tallies = [("bootstrapped demo runs", res["bootstrap"]["total"])]
    tallies += [(label, t) for label, t in res["synthetic"].items() if "stress" not in label]
    worst = ("", "", 0.0, "")
    over = []
    for label, t in tallies:
        bad = []
        for metric in sorted(t.steps):
            if label == "bootstrapped demo runs" and trending(metric):
                continue
            r = rate(t.metric_total(metric), t.steps[metric])
            det = max(DETECTORS, key=lambda d, m=metric: t.flags[(m, d)])
            if r >= GOAL_PER_10K:
                parts = ", ".join(
                    f"{d} {rate(t.flags[(metric, d)], t.steps[metric]):.3f}"
                    for d in DETECTORS
                    if t.flags[(metric, d)]
                )
                bad.append(f"`{metric}` {r:.3f} ({parts})")
            if r > worst[2]:
                worst = (metric, det, r, label)
        if bad:
            over.append(f"{label}: " + "; ".join(bad))
    goals.append(
        {
            "goal": f"false flags < {GOAL_PER_10K} per metric per 10k healthy steps (stress case excluded)",
            "met": not over,
            "worst": f"`{worst[0]}` ({worst[1]}) {worst[2]:.3f} on {worst[3]}"
            if worst[0]
            else "no flag at all",
        }
    )
    misses += [f"false flags per 10k over the goal on {o}" for o in over]
    for label, t in res["synthetic"].items():
        if "stress" in label:
            m, d, r = t.worst()
            if r >= GOAL_PER_10K:
                misses.append(f"stress case {label} (not a goal): `{m}` {d} {r:.3f} per 10k")
    # demo
    demo = res["demo"]
    if demo:
        late, details = [], []
        for key, c in demo.items():
            if key.split(" | ")[0] in FAULT_SCENARIOS and c["within"] < c["seeds"]:
                late.append(f"{key}: {c['within']}/{c['seeds']} within {WITHIN} (max delay {c['max_delay']})")
                for r in c["runs"]:
                    if r["delay"] is None or r["delay"] > WITHIN:
                        first = (
                            "not flagged at all"
                            if r["delay"] is None
                            else f"first flag at onset +{r['delay']} (`{r['first_detector']}` on "
                            f"`{r['first_metric']}`)"
                        )
                        twin = demo.get(f"all-fixed | {key.split(' | ')[1]}", {"runs": []})
                        spread = [x for t in twin["runs"] for x in t["early_ratio"]]
                        healthy = (
                            f" (a healthy twin, all-fixed, is {min(spread):g}-{max(spread):g}x "
                            "at those steps)"
                            if spread
                            else ""
                        )
                        details.append(
                            f"{key} seed {r['seed']}: {first}; its {EFFECT_METRIC} at onset +0..+{WITHIN} "
                            f"is {', '.join(f'{x:g}x' for x in r['early_ratio'])} the reference run's at "
                            f"the same step{healthy}"
                        )
        goals.append(
            {
                "goal": f"every demo fault flagged within {WITHIN} steps of onset, every seed",
                "met": not late,
                "worst": "; ".join(late) if late else "all on time",
            }
        )
        misses += [f"demo fault late or missed: {x}" for x in late] + details
        noisy = [
            f"{key}: {c['with_findings']}/{c['seeds']} seeds"
            for key, c in demo.items()
            if key.split(" | ")[0] in HEALTHY_SCENARIOS and c["with_findings"]
        ]
        goals.append(
            {
                "goal": "no finding on healthy demo runs (reference, all-fixed)",
                "met": not noisy,
                "worst": "; ".join(noisy) if noisy else "none",
            }
        )
        misses += [f"findings on a healthy demo run: {x}" for x in noisy]
    # delays: not a stated goal, but a step change of 2x or more missed is worth saying
    missed = [
        f"{k}: {v['detected']}/{v['seeds']}" for k, v in res["delays"].items() if v["fraction_detected"] < 1
    ]
    if missed:
        misses.append("changes not detected on every seed (detected / seeds): " + "; ".join(missed))
    pre: Counter[str] = Counter()
    for key, v in res["delays"].items():
        pre[key.split(" | ")[0]] += v["pre_change_flags"]
    if sum(pre.values()):
        misses.append(
            "false flags in the healthy stretch before the change of the delay series: "
            + ", ".join(f"{n} on {noise}" for noise, n in pre.items())
        )
    return goals, misses


def to_json(res: dict[str, Any]) -> dict[str, Any]:
    return {
        "sizes": res["sizes"],
        "seconds": res["seconds"],
        "notes": res["notes"],
        "goals": res["goals"],
        "misses": res["misses"],
        "bootstrap": {
            "runs": res["bootstrap"]["runs"],
            "groups": {g: t.as_json() for g, t in res["bootstrap"]["groups"].items()},
            "all": res["bootstrap"]["total"].as_json(),
        },
        "synthetic": {label: t.as_json() for label, t in res["synthetic"].items()},
        "delays": res["delays"],
        "demo": res["demo"],
    }


# ----------------------------------------------------------------------------- main


def open_stores(
    data: Path, engines: Sequence[str], seeds: Sequence[int]
) -> tuple[dict[str, storage.Store], list[str]]:
    stores, notes = {}, []
    for engine in engines:
        for seed in seeds:
            root = data / f"{engine}-s{seed}"
            if root.is_dir():
                stores[root.name] = storage.Store(root)
            else:
                notes.append(f"no demo store {root}")
    long_root = data / "torch-long"
    if "torch" in engines and long_root.is_dir():
        stores["torch-long"] = storage.Store(long_root)
    return stores, notes


def main(argv: Sequence[str] | None = None) -> int:
    parser = _report.benchmark_parser("detection", __doc__)
    parser.add_argument(
        "--data",
        type=_demo_stores.existing_dir,
        default=None,
        help="existing demo stores (ENGINE-sSEED, torch-long)",
    )
    parser.add_argument("--engines", nargs="+", choices=ENGINES, default=list(ENGINES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument(
        "--long-steps", type=int, default=200, help="steps of the long torch run generated (0: none)"
    )
    parser.add_argument(
        "--steps", type=_report.positive_int, default=50_000, help="bootstrapped length of each healthy run"
    )
    parser.add_argument("--block", type=float, default=6.0, help="mean block length of the bootstrap")
    parser.add_argument(
        "--synthetic-steps", type=_report.positive_int, default=50_000, help="length of one synthetic series"
    )
    parser.add_argument(
        "--replicates", type=_report.positive_int, default=100, help="synthetic series per case and metric"
    )
    parser.add_argument(
        "--ref-steps", type=_report.positive_int, default=200, help="length of a synthetic reference"
    )
    parser.add_argument(
        "--change-at", type=_report.positive_int, default=1000, help="step of the injected change"
    )
    parser.add_argument("--delay-seeds", type=_report.positive_int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.block < 1:
        parser.error("--block must be >= 1")
    start = time.perf_counter()
    notes: list[str] = []
    make = functools.partial(generate, engines=args.engines, seeds=args.seeds, long_steps=args.long_steps)
    with _demo_stores.demo_data(args.data, make, "detection") as (data, made_notes):
        notes += made_notes
        stores, missing = open_stores(data, args.engines, args.seeds)
        notes += missing
        print("1a: bootstrapped healthy demo runs", file=sys.stderr, flush=True)
        boot = healthy_bootstrap(stores, args.steps, args.block, args.seed)
        print("3: demo scenarios", file=sys.stderr, flush=True)
        demo = demo_scenarios(stores)
    print("1b: synthetic noise", file=sys.stderr, flush=True)
    syn = synthetic_false_flags(
        synthetic_cases(), args.replicates, args.synthetic_steps, args.ref_steps, args.seed
    )
    print("2: detection delays", file=sys.stderr, flush=True)
    dl = delays(args.change_at, args.delay_seeds, args.ref_steps, args.seed)
    res: dict[str, Any] = {
        "bootstrap": boot,
        "synthetic": syn,
        "delays": dl,
        "demo": demo,
        "notes": notes,
        "argv": ["python -m bench.detection", *(sys.argv[1:] if argv is None else argv)],
        "sizes": {
            "bootstrap_steps_per_run": args.steps,
            "block": args.block,
            "synthetic_steps": args.synthetic_steps,
            "replicates": args.replicates,
            "ref_steps": args.ref_steps,
            "change_at": args.change_at,
            "delay_seeds": args.delay_seeds,
        },
    }
    res["goals"], res["misses"] = judge_goals(res)
    res["seconds"] = time.perf_counter() - start
    return _report.finish(args, report(res, args), to_json(res))


if __name__ == "__main__":
    sys.exit(main())
