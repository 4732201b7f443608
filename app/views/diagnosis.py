"""Diagnosis: the known causes of one run's mismatch, ranked, and the evidence each rule read.

The ranking and the sentences come from ``monitor.diagnose`` (through the cached
``session.diagnosis``); this page lays them out and draws the series and sampled sequences they
were read from, so a person can check the verdict by eye.
"""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pyarrow as pa
import streamlit as st

from logprobe import monitor, storage
from logprobe.app import charts, replays
from logprobe.app.session import Context, diagnosis, literal

POSITION = {  # legend label -> metric: mean |d| by quarter of the response
    "1st quarter": "signature/abs_d_pos_q1",
    "2nd quarter": "signature/abs_d_pos_q2",
    "3rd quarter": "signature/abs_d_pos_q3",
    "4th quarter": "signature/abs_d_pos_q4",
}
PROBABILITY = {  # legend label -> metric: mean |d| by the rollout's probability of the token
    "p < 0.1": "signature/abs_d_prob_low",
    "0.1 ≤ p < 0.9": "signature/abs_d_prob_mid",
    "p ≥ 0.9": "signature/abs_d_prob_high",
}
SEQUENCES = 200  # newest sampled sequences drawn in the scatter


def render(ctx: Context) -> None:
    st.header("Diagnosis")
    ids = [r["run_id"] for r in ctx.runs]
    if not ids:
        st.info("No run matches the filter in the sidebar.")
        return
    # The compared runs first, then every other run in view: a diagnosis is of one run.
    run_id = st.selectbox("Run", [*ctx.selected, *(r for r in ids if r not in ctx.selected)])
    ranked, evidence = diagnosis(ctx.store, run_id)
    if not np.isfinite(evidence.get(charts.LEVEL)).any():
        st.info(
            f"{literal(run_id)} logged no {literal(charts.LEVEL)}, the level a diagnosis reads "
            "(Run.log_mismatch writes it): nothing to diagnose."
        )
        return
    _verdict(run_id, ranked, evidence)
    _replay(ctx, run_id)
    _evidence(ctx, run_id, ranked, evidence)


def _verdict(run_id: str, ranked: list[monitor.Diagnosis], evidence: monitor.Evidence) -> None:
    judged = _judged_against(evidence)
    hot = int(evidence.elevated.sum())
    if not ranked:
        if hot:
            # Elevated but unexplained: not healthy, and no rule of the library names it.
            st.warning(
                f"No known cause: on {hot} of {len(evidence.steps)} steps mean |d| rose above {judged}, "
                "but no rule of the cause library recognises their signature."
            )
        else:
            st.success(f"Healthy: on all {len(evidence.steps)} steps mean |d| stayed at or below {judged}.")
        return
    top = ranked[0]
    since = "" if top.step_first is None else f", from step {top.step_first}"
    st.warning(
        f"Most likely: **{literal(top.title or top.cause)}** ({literal(top.cause)}, confidence "
        f"{top.confidence:.2f}{since}). {literal(top.evidence)}"
    )
    st.markdown(f"**Fix:** {literal(top.fix)}")
    st.dataframe(
        pa.Table.from_pylist(
            [
                {
                    "cause": d.cause,
                    "title": d.title,
                    "confidence": d.confidence,
                    "from step": d.step_first,
                    "steps": d.steps,
                    "evidence": d.evidence,
                    "fix": d.fix,
                }
                for d in ranked
            ]
        ),
        hide_index=True,
        column_config={
            "confidence": st.column_config.ProgressColumn(
                "confidence", min_value=0.0, max_value=1.0, format="%.2f"
            ),
            "steps": st.column_config.NumberColumn("steps", help="Elevated steps that show the signature"),
            "evidence": st.column_config.TextColumn("evidence", width="large"),
            "fix": st.column_config.TextColumn("fix", width="large"),
        },
    )
    st.caption(f"{hot} of {len(evidence.steps)} steps elevated: mean |d| above {judged}.")
    st.download_button(
        "Download Markdown",
        monitor.diagnosis_markdown(run_id, ranked),
        file_name=f"diagnosis-{run_id}.md",
        mime="text/markdown",
    )


def _replay(ctx: Context, run_id: str) -> None:
    """Start a replay of the run and follow it: the verdict names the setting whose change brings
    the run to its reference's level, measured on the engine rather than read from signatures."""
    st.subheader("Replay")
    st.caption(
        "Re-score this run's logged sequences on vLLM under its recorded settings, then with one "
        "setting changed at a time (logprobs mode, prefix-cache reset, head dtype, sampling, batch), "
        "and name the smallest change that brings it to its reference's level. Each variant is "
        "stored as a run of source `replay`."
    )
    why = replays.available()
    if st.button("Replay this run", key=f"replay-{run_id}", disabled=why is not None, help=why):
        replays.start(ctx.root, run_id)
    if why is not None:
        st.caption(f"Replay is off here: {literal(why)}.")

    @st.fragment(
        run_every=1.0 if any(j.state() == "running" for j in replays.jobs(ctx.root, run_id)) else None
    )
    def follow() -> None:
        for job in replays.jobs(ctx.root, run_id)[:3]:
            _job(job)

    follow()


def _job(job: replays.Job) -> None:
    started = _when(job.folder.name.rsplit("@", 1)[-1])
    state = job.state()
    if state == "running":
        done, what = job.progress()
        st.progress(done, text=f"Replay started {started}: {literal(what)}")
        return
    if state == "failed":
        st.error(f"Replay started {started} failed: {literal(job.error())}")
        return
    report = job.report() or {}
    verdict = report.get("verdict") or {}
    changes = verdict.get("changes")
    message = literal(str(verdict.get("message", "")))
    if changes:
        st.success(f"Replay {started}: change **{literal(_changes(changes))}**. {message}.")
    elif changes == {}:
        st.success(f"Replay {started}: {message}.")
    else:
        st.warning(f"Replay {started}: {message}.")
    rows = [
        {
            "variant": v["name"],
            "changes": _changes(v["changes"]) or "as recorded",
            "mean |d|": (v.get("metrics") or {}).get("mismatch/abs_logp_diff_mean"),
            "k3": (v.get("metrics") or {}).get("mismatch/k3"),
            "removed": v.get("removed"),
            "run": v.get("run_id"),
            "error": v.get("error"),
        }
        for v in report.get("variants", [])
    ]
    rows += [
        {
            "variant": f"({name})",
            "changes": "level measured",
            "mean |d|": (v.get("metrics") or {}).get("mismatch/abs_logp_diff_mean"),
            "k3": (v.get("metrics") or {}).get("mismatch/k3"),
            "removed": None,
            "run": None,
            "error": v.get("error"),
        }
        for name, v in (report.get("levels") or {}).items()
    ]
    st.dataframe(
        pa.Table.from_pylist(rows),
        hide_index=True,
        column_config={
            "removed": st.column_config.NumberColumn(
                "removed",
                help="Share of the mismatch above the level to reach that the change removes",
                format="%.2f",
            ),
            "mean |d|": st.column_config.NumberColumn("mean |d|", format="%.3g"),
            "k3": st.column_config.NumberColumn("k3", format="%.3g"),
        },
    )
    st.caption(
        f"{report.get('seconds', 0):.0f} s on vLLM {literal(str((report.get('worker') or {}).get('vllm')))}."
    )


def _when(stamp: str) -> str:
    """``20261201T180105114681`` (the job folder's stamp) as ``2026-12-01 18:01:05 UTC``."""
    try:
        return datetime.strptime(stamp, "%Y%m%dT%H%M%S%f").strftime("%Y-%m-%d %H:%M:%S UTC")
    except ValueError:
        return stamp


def _changes(changes: dict) -> str:
    return ", ".join(f"{k} = {v}" for k, v in changes.items())


def _judged_against(evidence: monitor.Evidence) -> str:
    if evidence.reference_level is not None:
        return (
            f"{evidence.limit:.2g} (twice the 90th percentile of reference run "
            f"{literal(evidence.reference_run)}, {evidence.reference_level:.2g})"
        )
    return f"{evidence.limit:.2g} (a level no healthy setup reaches; no reference run recorded)"


def _evidence(ctx: Context, run_id: str, ranked: list[monitor.Diagnosis], evidence: monitor.Evidence) -> None:
    st.subheader("Evidence")
    st.plotly_chart(charts.mismatch_level_figure(evidence, ranked[0] if ranked else None), key="level")
    sequences = storage.sequences(ctx.store, run_id, limit=SEQUENCES)
    if sequences.num_rows:
        st.plotly_chart(charts.logprob_scatter(sequences), key="scatter")
    else:
        st.info(
            f"{literal(run_id)} logged no sampled sequences (collectors before the sequences table): "
            "no trainer vs rollout scatter."
        )
    signed = [
        (title, names)
        for title, names in (
            ("mean |d| by position in the response", POSITION),
            ("mean |d| by the rollout's token probability", PROBABILITY),
        )
        if any(np.isfinite(evidence.get(name)).any() for name in names.values())
    ]
    if not signed:
        st.info(
            f"{literal(run_id)} logged no `signature/*` metrics (collectors before signatures): no "
            "breakdown by position or probability."
        )
        return
    for column, (title, names) in zip(st.columns(len(signed)), signed, strict=True):
        column.plotly_chart(charts.signature_lines(evidence, names, title), key=title)
