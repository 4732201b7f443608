"""Runs overview: every run in view with status, health, its most likely cause, engine and key flags."""

from __future__ import annotations

import pyarrow as pa
import streamlit as st

from logprobe import monitor, storage
from logprobe.app.session import Context, findings, literal, top_causes

HEALTH = {None: "ok", "warn": "warn", "bad": "bad", "error": "bad"}
KEY_FLAGS = ("logprobs_mode", "enable_prefix_caching", "async_scheduling", "lm_head_dtype")


def render(ctx: Context) -> None:
    st.header("Runs")
    if not ctx.runs:
        st.info("No run matches the filter in the sidebar.")
        return
    latest_engine: dict[str, dict] = {}
    for engine in storage.engines(ctx.store, [r["run_id"] for r in ctx.runs]).to_pylist():
        latest_engine[engine["run_id"]] = engine  # oldest first, so the last one wins
    causes = top_causes(ctx.store, [r["run_id"] for r in ctx.runs])
    rows = []
    for run in ctx.runs:
        found = findings(ctx.store, run["run_id"])
        worst = max((f.severity for f in found), key=monitor.SEVERITIES.index, default=None)
        engine = latest_engine.get(run["run_id"], {})
        rows.append(
            {
                "run_id": run["run_id"],
                "name": run["name"],
                "status": run["status"],
                "health": HEALTH[worst],
                "cause": _cause(causes.get(run["run_id"])),
                # the worst first: a "bad" finding's reason must not be cut off by warnings
                "why": "; ".join(
                    dict.fromkeys(
                        f.message for f in sorted(found, key=lambda f: -monitor.SEVERITIES.index(f.severity))
                    )
                )[:300],
                "last_step": run["last_step"],
                "age_s": None if run["age_s"] is None else round(run["age_s"], 1),
                "points": run["points"],
                "engine": " ".join(filter(None, [engine.get("engine"), engine.get("vllm_version")])),
                **{flag: _text(engine.get(flag)) for flag in KEY_FLAGS},
                "selected": run["run_id"] in ctx.selected,
            }
        )
    st.dataframe(
        pa.Table.from_pylist(rows),
        hide_index=True,
        column_order=[
            "run_id",
            "name",
            "status",
            "health",
            "cause",
            "last_step",
            "age_s",
            "points",
            "engine",
            *KEY_FLAGS,
            "selected",
            "why",
        ],
        column_config={
            "health": st.column_config.TextColumn(
                "health",
                help="The worst of the monitor's findings (detectors and the field's levels); see 'why'",
            ),
            "why": st.column_config.TextColumn("why", help="The findings behind the badge"),
            "cause": st.column_config.TextColumn(
                "cause",
                help="The diagnosis's most likely cause (confidence 0 to 1); empty when healthy. "
                "The Diagnosis page shows its evidence and fix",
            ),
            "age_s": st.column_config.NumberColumn("age (s)", help="Seconds since the last write"),
            "selected": st.column_config.CheckboxColumn("compared", help="Pick runs in the sidebar"),
        },
    )
    counts = {s: sum(r["status"] == s for r in ctx.runs) for s in ("live", "finished", "stale")}
    st.caption(" · ".join(f"{n} {s}" for s, n in counts.items()))
    if bad := ctx.store.bad_files:
        skipped = "; ".join(f"{literal(p)} ({literal(why)})" for p, why in bad.items())
        st.warning(f"Skipped unreadable files: {skipped}")


def _cause(top: monitor.Diagnosis | None) -> str:
    return "" if top is None else f"{top.cause} ({top.confidence:.2f})"


def _text(value: object) -> str:
    return "" if value is None else str(value)
