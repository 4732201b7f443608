"""Plotly figures for the pages: layout only, from tables ``storage`` and ``monitor`` computed."""

from __future__ import annotations

import html
import math
from typing import Any

import numpy as np
import plotly.graph_objects as go
import pyarrow as pa
import pyarrow.compute as pc

from logprobe import monitor

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")
SEVERITY_COLORS = {"warn": "#ff7f0e", "bad": "#d62728", "error": "#d62728"}
# Events that can happen every step are drawn as short ticks along the bottom (color, row);
# anything else (config changes) as a full-height dashed line.
TICK_KINDS = {"weight_update": ("#555", 0), "stale_prefix_cache": ("#d62728", 1)}
LEVEL = "mismatch/abs_logp_diff_mean"  # the level a diagnosis judges a step by


def text(value: object) -> str:
    """``value`` as literal Plotly text (titles, legend, hover, ticks, annotations). Plotly renders
    a subset of HTML there (``<b>``, ``<a href>``, ``<br>``, entities) and hands a ``$...$`` string to
    MathJax; metric names, run ids, rule names and flag values are user data and must show as typed.
    Plotly decodes the entities back, so the text reads the same."""
    return html.escape(str(value), quote=False).replace("$", "&#36;")


def metric_figure(
    metric: str,
    series: pa.Table,
    *,
    x: str,
    half_life: float = 0.0,
    log_y: bool = False,
    findings: list[monitor.Finding] = (),
    events: list[dict[str, Any]] = (),
    rules: list[monitor.Rule] = (),
    x_range: tuple[float, float] | None = None,
) -> go.Figure:
    """One metric across runs: a min/max band (spikes survive downsampling), the line, and context.

    Findings are shaded, events are vertical markers and alert rules horizontal lines, so a person
    sees what the monitor saw on the same axes as the data.
    """
    fig = go.Figure()
    rows = series.to_pydict()
    run_ids = list(dict.fromkeys(rows["run_id"]))
    for i, run_id in enumerate(run_ids):
        idx = [j for j, r in enumerate(rows["run_id"]) if r == run_id]
        xs = [rows["x"][j] for j in idx]
        color = PALETTE[i % len(PALETTE)]
        fig.add_trace(
            go.Scatter(
                x=xs + xs[::-1],
                y=[rows["max"][j] for j in idx] + [rows["min"][j] for j in idx][::-1],
                fill="toself",
                fillcolor=color,
                opacity=0.15,
                line={"width": 0},
                showlegend=False,
                hoverinfo="skip",
                name=text(f"{run_id} min/max"),
            )
        )
        last = [rows["last"][j] for j in idx]
        smoothed = half_life > 0
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=last,
                mode="lines",
                name=text(run_id if not smoothed else f"{run_id} (raw)"),
                line={"color": color, "width": 1},
                opacity=0.35 if smoothed else 1.0,
                legendgroup=run_id,
                showlegend=not smoothed,
            )
        )
        if smoothed:
            fig.add_trace(
                go.Scatter(
                    x=xs,
                    y=monitor.ema(np.asarray(xs), np.asarray(last, dtype=float), half_life),
                    mode="lines",
                    name=text(run_id),
                    line={"color": color, "width": 2},
                    legendgroup=run_id,
                )
            )
    if x == "step":
        _shade_findings(fig, [f for f in findings if f.metric == metric and f.run_id in run_ids], run_ids)
    ticks: dict[str, set[float]] = {}
    for event in events:
        at = event.get("step") if x == "step" else event.get("epoch") if x == "time" else None
        if at is None or event["run_id"] not in run_ids:
            continue
        if event["kind"] in TICK_KINDS:
            ticks.setdefault(event["kind"], set()).add(at)  # often every step: short ticks, not lines
        else:
            fig.add_vline(x=at, line_dash="dash", line_color="#555")
    for kind, points in ticks.items():
        color, row = TICK_KINDS[kind]
        for at in sorted(points):
            fig.add_shape(
                type="line",
                x0=at,
                x1=at,
                y0=0.05 * row,
                y1=0.05 * (row + 1),
                yref="paper",
                line={"color": color, "width": 1.5},
            )
    for rule in rules:
        if rule.metric != metric:
            continue
        for level in (rule.above, rule.below):
            if level is None or (log_y and level <= 0):
                continue
            fig.add_hline(
                y=level,
                line_dash="dot",
                line_color=SEVERITY_COLORS.get(rule.severity, "#d62728"),
                annotation_text=text(rule.name),
                annotation_position="bottom right",
            )
    fig.update_layout(
        title=text(metric),
        height=330,
        margin={"t": 40, "b": 20, "l": 10, "r": 10},
        xaxis_title={"time": "wall time (unix s)"}.get(x, x),
        yaxis_type="log" if log_y else "linear",
        legend={"orientation": "h"},
    )
    if x_range is not None:
        fig.update_xaxes(range=list(x_range))
    return fig


def _shade_findings(fig: go.Figure, findings: list[monitor.Finding], run_ids: list[str]) -> None:
    """Few runs: shade the whole height. Many runs: a thin strip per run along the top, in its color,
    so seven runs' findings do not paint the chart red."""
    for f in findings:
        i = run_ids.index(f.run_id)
        strip = len(run_ids) > 2
        fig.add_shape(
            type="rect",
            x0=f.step_first - 0.5,
            x1=f.step_last + 0.5,
            y0=1 - 0.025 * (i + 1) if strip else 0,
            y1=1 - 0.025 * i if strip else 1,
            yref="paper",
            fillcolor=PALETTE[i % len(PALETTE)] if strip else SEVERITY_COLORS.get(f.severity, "#d62728"),
            opacity=0.8 if strip else 0.12,
            line_width=0,
            label={"text": "" if strip else text(f.detector), "textposition": "top left"},
        )


def histogram_heatmap(matrix: pa.Table) -> go.Figure:
    """Log-ratio histogram per step: one column per step, one row per bin, log-scaled counts."""
    d = matrix.to_pydict()
    steps = sorted(set(d["step"]))
    bins = sorted(set(d["bin"]))
    col = {s: i for i, s in enumerate(steps)}
    row = {b: i for i, b in enumerate(bins)}
    z = np.zeros((len(bins), len(steps)))
    labels = {}
    for step, b, lo, hi, count in zip(d["step"], d["bin"], d["lo"], d["hi"], d["count"], strict=True):
        z[row[b], col[step]] += count
        labels[b] = f"[{_edge(lo)}, {_edge(hi)})"
    fig = go.Figure(
        go.Heatmap(
            x=steps,
            y=[labels[b] for b in bins],
            z=np.log10(1 + z),
            colorscale="Viridis",
            colorbar={"title": "log10(1+tokens)"},
            hovertemplate="step %{x}<br>log ratio %{y}<br>log10(1+n) %{z:.2f}<extra></extra>",
        )
    )
    fig.update_layout(
        height=420,
        margin={"t": 30, "b": 20},
        xaxis_title="step",
        yaxis_title="trainer - rollout logprob",
    )
    return fig


def flag_strip(effect: monitor.FlagEffect, metric: str) -> go.Figure:
    """The metric's segment means per value of one flag: a box with every segment drawn."""
    fig = go.Figure()
    for value, points in effect.groups.items():
        fig.add_trace(go.Box(y=points, name=text(value), boxpoints="all", jitter=0.4, pointpos=0))
    fig.update_layout(
        title=text(f"{metric} by {effect.flag}"),
        height=360,
        margin={"t": 40, "b": 20},
        yaxis_title=text(f"{metric} (segment mean)"),
        showlegend=False,
    )
    return fig


def _edge(v: float | None) -> str:
    if v is None or not math.isfinite(v):
        return "-inf" if v is not None and v < 0 else "inf"
    return f"{v:.0e}" if v != 0 and abs(v) < 1e-2 else f"{v:g}"


def mismatch_level_figure(evidence: monitor.Evidence, top: monitor.Diagnosis | None = None) -> go.Figure:
    """Mean |d| per step against the level the diagnosis calls elevated, with the top cause's first
    step: the steps every cause rule reads, and where the one named begins."""
    level = evidence.get(LEVEL)
    elevated = evidence.elevated
    fig = go.Figure(
        go.Scatter(
            x=evidence.steps,
            y=level,
            mode="lines+markers",
            name="mean |d|",
            line={"color": PALETTE[0], "width": 1.5},
            marker={"size": 5, "color": [PALETTE[1] if e else PALETTE[0] for e in elevated]},
            hovertemplate="step %{x}<br>mean |d| %{y:.3e}<extra></extra>",
        )
    )
    fig.add_hline(
        y=evidence.limit,
        line_dash="dot",
        line_color=SEVERITY_COLORS["bad"],
        annotation_text=text(f"elevated above {evidence.limit:.2g}"),
        annotation_position="bottom right",
    )
    if top is not None and top.step_first is not None:
        fig.add_vline(
            x=top.step_first,
            line_dash="dash",
            line_color="#555",
            annotation_text=text(f"{top.cause} from step {top.step_first}"),
            annotation_position="top right",
        )
    fig.update_layout(
        title="mean |trainer - rollout| logprob per step",
        height=330,
        margin={"t": 40, "b": 20, "l": 10, "r": 10},
        xaxis_title="step",
        yaxis_title="mean |d|",
        # The levels span decades (a healthy pair 1e-7, a fault 1e-1): log unless a point is 0.
        yaxis_type="log" if _log_scale([level]) else "linear",
        showlegend=False,
    )
    return fig


def logprob_scatter(sequences: pa.Table, max_points: int = 20_000) -> go.Figure:
    """Trainer against rollout logprob for every scored token of the sampled sequences, coloured by
    step, beside y = x. A slope other than 1 is raw against processed logprobs (temperature), a cloud
    wholly on one side of the line truncation (top-p/top-k renormalisation), a wide cloud stale or
    misaligned logprobs. More tokens than ``max_points`` are thinned evenly, not averaged."""
    trainer = pc.list_flatten(sequences.column("trainer_logprobs"))
    rollout = pc.list_flatten(sequences.column("rollout_logprobs"))
    rows = pc.list_parent_indices(sequences.column("trainer_logprobs"))
    x = np.asarray(rollout.to_numpy(zero_copy_only=False), dtype=float)
    y = np.asarray(trainer.to_numpy(zero_copy_only=False), dtype=float)
    step = np.asarray(sequences.column("step").to_numpy(zero_copy_only=False))[
        np.asarray(rows.to_numpy(zero_copy_only=False), dtype=np.int64)
    ]
    keep = np.flatnonzero(np.isfinite(x) & np.isfinite(y))
    if keep.size > max_points:
        keep = keep[np.linspace(0, keep.size - 1, max_points).astype(np.int64)]
    x, y, step = x[keep], y[keep], step[keep]
    fig = go.Figure(
        go.Scattergl(
            x=x,
            y=y,
            mode="markers",
            name="tokens",
            marker={
                "size": 4,
                "opacity": 0.6,
                "color": step,
                "colorscale": "Viridis",
                "colorbar": {"title": "step"},
            },
            customdata=step,
            hovertemplate="rollout %{x:.4f}<br>trainer %{y:.4f}<br>step %{customdata}<extra></extra>",
        )
    )
    if x.size:
        lo, hi = float(min(x.min(), y.min())), float(max(x.max(), y.max(), 0.0))
        fig.add_trace(
            go.Scatter(
                x=[lo, hi], y=[lo, hi], mode="lines", name="y = x", line={"color": "#555", "dash": "dash"}
            )
        )
        pad = 0.03 * (hi - lo or 1.0)
        # One range on both axes: the line is the diagonal and a slope reads as it is.
        fig.update_xaxes(range=[lo - pad, hi + pad])
        fig.update_yaxes(range=[lo - pad, hi + pad])
    fig.update_layout(
        title=text(f"trainer vs rollout logprob ({x.size} tokens of {sequences.num_rows} sampled sequences)"),
        height=420,
        margin={"t": 40, "b": 20, "l": 10, "r": 10},
        xaxis_title="rollout logprob",
        yaxis_title="trainer logprob",
        showlegend=False,
    )
    return fig


def signature_lines(evidence: monitor.Evidence, series: dict[str, str], title: str) -> go.Figure:
    """Several ``signature/*`` series of one run over steps (legend label -> metric name), elevated
    steps shaded: where in the response, or at which probabilities, the mismatch sits."""
    fig = go.Figure()
    for i, (label, metric) in enumerate(series.items()):
        values = evidence.get(metric)
        if not np.isfinite(values).any():
            continue
        fig.add_trace(
            go.Scatter(
                x=evidence.steps,
                y=values,
                mode="lines+markers",
                name=text(label),
                line={"color": PALETTE[i % len(PALETTE)], "width": 1.5},
                marker={"size": 4},
                hovertemplate=text(label) + "<br>step %{x}<br>mean |d| %{y:.3e}<extra></extra>",
            )
        )
    _shade_steps(fig, evidence.steps, evidence.elevated)
    fig.update_layout(
        title=text(title),
        height=360,
        margin={"t": 40, "b": 20, "l": 10, "r": 10},
        xaxis_title="step",
        yaxis_title="mean |d|",
        yaxis_type="log" if _log_scale([trace.y for trace in fig.data]) else "linear",
        legend={"orientation": "h", "y": -0.3, "yanchor": "top"},  # below the axis title
    )
    return fig


def _log_scale(series: list[Any]) -> bool:
    """Whether a log axis shows every point: some values, all of them positive (a log axis would
    silently drop a step whose mean |d| is exactly 0, as a bit-exact engine gives)."""
    values = np.concatenate([np.asarray(s, dtype=float).ravel() for s in series]) if series else np.array([])
    values = values[np.isfinite(values)]
    return bool(values.size and (values > 0).all())


def _shade_steps(fig: go.Figure, steps: np.ndarray, mask: np.ndarray) -> None:
    """One light band per run of consecutive masked steps (not one shape per step)."""
    start = None
    for i, on in enumerate([*mask.tolist(), False]):
        if on and start is None:
            start = i
        elif not on and start is not None:
            fig.add_vrect(
                x0=steps[start] - 0.5,
                x1=steps[i - 1] + 0.5,
                fillcolor=SEVERITY_COLORS["bad"],
                opacity=0.08,
                line_width=0,
            )
            start = None
