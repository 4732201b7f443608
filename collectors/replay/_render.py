"""A replay report as Markdown: the verdict first, then one row per variant."""

from __future__ import annotations

import math
from typing import Any


def markdown(report: Any) -> str:
    v = report.verdict
    lines = [f"# Replay of {report.run} (step {', '.join(map(str, report.steps))})", ""]
    if v.changes:
        lines.append(f"**Verdict: change {_changes(v.changes)}.** {v.message}.")
    elif v.changes == {}:
        lines.append(f"**Verdict: {v.message}.**")
    else:
        lines.append(f"**Verdict: no single fix found.** {v.message}.")
    lines += [
        "",
        f"Engine: vLLM {report.worker.get('vllm')} under {report.worker.get('executable')}; "
        f"{sum(1 for x in report.variants if not x.error)} variants in {report.seconds:.0f} s.",
    ]
    if report.reference_worker:
        other = report.reference_worker
        lines.append(f"Reference engine: vLLM {other.get('vllm')} under {other.get('executable')}.")
    logged = report.recorded.get("mismatch/abs_logp_diff_mean")
    if logged is not None:
        lines.append(
            f"Logged mean |d| of these sequences: {logged:.3g}; the recorded-settings replay is "
            f"{_num(report.reproduced)} from the logged engine logprobs at most."
        )
        if report.reproduced > 1e-3:
            lines.append(
                "It does not reproduce them exactly: the engine's state at the time (a prefix cache "
                "filled by older weights, other batch neighbours) is only approximated by the batch "
                "replayed before the update."
            )
    lines += [
        "",
        "| variant | changes | mean abs d | k3 | max abs d | removed | run |",
        "|---|---|---|---|---|---|---|",
    ]
    base = report.variants[0].level
    for x in report.variants:
        m = x.metrics
        if x.error:
            lines.append(f"| {x.name} | {_changes(x.changes)} | failed: {x.error} | | | | |")
            continue
        refused = f" (engine refused {', '.join(x.refused)})" if x.refused else ""
        lines.append(
            f"| {x.name} | {_changes(x.changes)}{refused} | {_num(m.get('mismatch/abs_logp_diff_mean'))} | "
            f"{_num(m.get('mismatch/k3'))} | {_num(m.get('mismatch/abs_logp_diff_max'))} | "
            f"{_share(x.removed, x.level / base if base else math.nan)} | {x.run_id or ''} |"
        )
    for t in report.targets:
        m = t.metrics
        at = t.name.startswith(v.reference) and t.level == v.reference_level
        what = "level to reach" if at else "measured"
        lines.append(
            f"| ({t.name}) | {what} | {_num(m.get('mismatch/abs_logp_diff_mean'))} | "
            f"{_num(m.get('mismatch/k3'))} | {_num(m.get('mismatch/abs_logp_diff_max'))} | | |"
        )
    if report.notes:
        lines += ["", *[f"- {n}" for n in report.notes]]
    return "\n".join(lines)


def _changes(changes: dict[str, Any]) -> str:
    return ", ".join(f"`{k}={v}`" for k, v in changes.items()) or "as recorded"


def _num(x: float | None) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3g}"


def _share(removed: float | None, ratio: float) -> str:
    if removed is None:
        return ""
    if removed > -0.005:
        return f"{max(removed, 0.0):.0%}"
    return f"worse ({ratio:.3g}x the mismatch)" if math.isfinite(ratio) else "worse"
