"""Does a candidate run match a reference run? Step-aligned, per metric, with a verdict.

The seed's question ("does V1 reproduce the V0 reference?") as a report: per metric the distance
between the curves over the steps both runs logged, the first step where the candidate is worse
than the reference by more than the tolerance for ``consecutive`` steps, and the engine flag diff
beside it. Mismatch metrics are judged one-sided (the candidate being *better* is no failure);
training metrics are shown for context and judged only if given a tolerance.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field

import numpy as np

from logprobe import storage
from logprobe.monitor._flags import flag_diff
from logprobe.storage import Store

# Per-metric tolerances: how much worse than the reference the candidate may be, per step.
DEFAULT_TOLERANCES: dict[str, float] = {
    "mismatch/abs_logp_diff_mean": 2e-3,
    "mismatch/k3": 1e-4,
    "mismatch/abs_prob_diff_mean": 1e-3,
}
CONTEXT_METRICS = ("reward/mean", "train/kl_ref", "train/entropy", "train/clip_frac")
# Characters Markdown (CommonMark, GFM tables, and the math/emoji/colour extensions of renderers
# such as Streamlit's) gives a meaning; "_" only counts at a word's edge, so snake_case stays legible.
_MARKDOWN_SPECIAL = re.compile(r"[\\`*{}\[\]()<>#+!|$~:&]|(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


@dataclass
class MetricParity:
    metric: str
    steps: int  # steps both runs logged
    mean_abs_diff: float
    max_abs_diff: float
    ref_mean: float
    run_mean: float
    tolerance: float | None
    first_divergence: int | None  # first step of the first out-of-tolerance stretch
    passed: bool | None  # None: context only, not judged


@dataclass
class ParityReport:
    ref: str
    run: str
    metrics: list[MetricParity]
    flag_diff: list[tuple[str, str, str]] = field(default_factory=list)
    consecutive: int = 3

    @property
    def passed(self) -> bool:
        return all(m.passed is not False for m in self.metrics)

    @property
    def first_divergence(self) -> int | None:
        steps = [m.first_divergence for m in self.metrics if m.first_divergence is not None]
        return min(steps) if steps else None

    def to_markdown(self) -> str:
        verdict = "PASS" if self.passed else f"FAIL (first divergence at step {self.first_divergence})"
        lines = [
            f"# Parity: {_md(self.run)} against {_md(self.ref)}",
            "",
            f"**Verdict: {verdict}**",
            "",
            "| metric | steps | ref mean | run mean | mean abs diff | max abs diff | tolerance "
            "| first divergence | verdict |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for m in self.metrics:
            judged = "-" if m.passed is None else ("pass" if m.passed else "FAIL")
            tol = "-" if m.tolerance is None else f"{m.tolerance:g}"
            first = "-" if m.first_divergence is None else str(m.first_divergence)
            lines.append(
                f"| {_md(m.metric)} | {m.steps} | {m.ref_mean:.4g} | {m.run_mean:.4g} | "
                f"{m.mean_abs_diff:.4g} | {m.max_abs_diff:.4g} | {tol} | {first} | {judged} |"
            )
        lines += [
            "",
            f"A metric fails when the run is worse than the reference by more than the tolerance "
            f"for {self.consecutive} consecutive steps.",
            "",
            "## Engine flags that differ",
            "",
        ]
        if self.flag_diff:
            lines += ["| flag | ref | run |", "|---|---|---|"]
            lines += [f"| {_md(k)} | {_md(a)} | {_md(b)} |" for k, a, b in self.flag_diff]
        else:
            lines.append("None: both runs used the same engine settings.")
        return "\n".join(lines) + "\n"

    def to_html(self) -> str:
        from markdown_it import MarkdownIt

        # No raw HTML: the values are escaped already, and this is the second lock on that door.
        body = MarkdownIt("commonmark", {"html": False}).enable("table").render(self.to_markdown())
        title = html.escape(f"Parity: {self.run} against {self.ref}")
        return (
            f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title><style>"
            "body{font-family:system-ui,sans-serif;margin:2em}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
            "</style></head><body>" + body + "</body></html>"
        )


def parity(
    store: Store,
    ref: str,
    run: str,
    *,
    metrics: list[str] | None = None,
    tolerances: dict[str, float] | None = None,
    consecutive: int = 3,
) -> ParityReport:
    """Compare ``run`` against ``ref`` step by step; see the module docstring for the rules."""
    tol = {**DEFAULT_TOLERANCES, **(tolerances or {})}
    names = metrics or [*DEFAULT_TOLERANCES, *CONTEXT_METRICS]
    known = set(store.run_summary("metrics").column("run_id").to_pylist())
    for run_id in (ref, run):
        if run_id not in known:
            raise ValueError(f"no metrics for run {run_id!r}; runs with metrics: {', '.join(sorted(known))}")
    rows = []
    for name in names:
        aligned = storage.aligned_steps(store, ref, run, name)
        if aligned.num_rows == 0:
            continue
        steps = aligned.column("step").to_numpy()
        a = aligned.column("ref").to_numpy(zero_copy_only=False)
        b = aligned.column("run").to_numpy(zero_copy_only=False)
        diff = np.abs(b - a)
        limit = tol.get(name)
        first = None
        if limit is not None:
            worse = (b - a) > limit
            first = _first_run(steps, worse, consecutive)
        rows.append(
            MetricParity(
                name,
                len(steps),
                float(np.nanmean(diff)),
                float(np.nanmax(diff)),
                float(np.nanmean(a)),
                float(np.nanmean(b)),
                limit,
                first,
                None if limit is None else first is None,
            )
        )
    return ParityReport(ref, run, rows, flag_diff(store, ref, run), consecutive)


def _md(value: object) -> str:
    """A run id, metric name or flag value as literal Markdown text on one line (a table cell):
    names are user data, and ``**x**``, ``<img ...>`` or ``[x](javascript:...)`` must show as typed."""
    return _MARKDOWN_SPECIAL.sub(lambda m: "\\" + m.group(0), _CONTROL.sub(" ", str(value)))


def _first_run(steps: np.ndarray, flags: np.ndarray, length: int) -> int | None:
    count = 0
    for i, flag in enumerate(flags.tolist()):
        count = count + 1 if flag else 0
        if count >= length:
            return int(steps[i - length + 1])
    return None
