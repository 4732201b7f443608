"""Replay table: does ``logprobe replay`` name the setting that restores parity, run after run?

For each seed this trains the vLLM demo (``python -m collectors.demo --engine vllm``, every scenario
vLLM can play, into a temporary directory; ``--data DIR`` reuses stores laid out as ``vllm-sSEED``
that recorded checkpoints), replays each run with the default candidates, and checks the verdict
against the change the scenario calls for. Faults outside the engine's settings (weights that never
reached it, rollouts from older weights, a trainer pairing tokens off by one) must get "nothing to
change": the replay holds the weights and the pairing fixed, so the engine is at parity there and
the gap between the logged and the replayed level is the sign that the cause lies elsewhere.

Reported per run: the verdict, the replayed mean |d| under the recorded settings and with the
change, the level to reach, the logged level of the same sequences, and the wall time of the
replay (worker start, one engine per variant, the trainer's pass, the variant runs written).

``python -m bench.replay [--data DIR] [--seeds 0 1 2] [--scenarios NAME ...] [--steps N] [--out PATH]``.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import _demo_stores, _report
from logprobe.app import replays
from logprobe.collectors.demo import DEFAULT_STEPS, SCENARIOS
from logprobe.collectors.demo._loop import supported

EXPECTED: dict[str, dict[str, Any]] = {
    "reference": {},
    "raw-logprobs": {"logprobs_mode": "processed_logprobs"},
    "prefix-cache-no-reset": {"reset_prefix_cache": True},
    "bf16-lm-head": {"head_dtype": "float32"},
    "all-fixed": {},
    "top-p-truncation": {"top_p": 1.0, "top_k": -1},
    "stale-weights": {},  # outside the engine's settings: nothing to change there
    "policy-lag": {},
    "off-by-one": {},
    "flag-change": {"logprobs_mode": "processed_logprobs"},  # the latest step is after the switch
}
GOAL_S = 180.0  # the goal for five variants on the tiny model


def replay_run(root: Path, run: str) -> tuple[dict[str, Any], float]:
    began = time.perf_counter()
    proc = subprocess.run(replays.command(root, run), capture_output=True, text=True)
    seconds = time.perf_counter() - began
    if proc.returncode:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"}, seconds
    return json.loads(proc.stdout), seconds


def judge(name: str, report: dict[str, Any], seconds: float) -> dict[str, Any]:
    if "error" in report:
        return {"ok": False, "error": report["error"], "seconds": seconds}
    verdict = report["verdict"]
    variants = {v["name"]: v for v in report["variants"]}
    chosen = next((v for v in variants.values() if v["changes"] == verdict["changes"]), variants["recorded"])
    logged = report.get("recorded", {}).get("mismatch/abs_logp_diff_mean")
    return {
        "ok": verdict["changes"] == EXPECTED[name],
        "changes": verdict["changes"],
        "recorded": variants["recorded"]["metrics"].get("mismatch/abs_logp_diff_mean"),
        "fixed": chosen["metrics"].get("mismatch/abs_logp_diff_mean"),
        "target": verdict["reference_level"],
        "target_kind": verdict["reference"],
        "logged": logged,
        "reproduced": report.get("reproduced"),
        "variants": len(report["variants"]) - 1,
        "seconds": seconds,
    }


def _changes(changes: dict[str, Any] | None) -> str:
    if changes is None:
        return "none found"
    return ", ".join(f"`{k}={v}`" for k, v in changes.items()) or "nothing to change"


def _num(x: float | None) -> str:
    return "" if x is None else f"{x:.3g}"


def report(results: dict[int, dict[str, dict[str, Any]]], seconds: float, notes: list[str]) -> str:
    passed = sum(v["ok"] for runs in results.values() for v in runs.values())
    total = sum(len(runs) for runs in results.values())
    times = [v["seconds"] for runs in results.values() for v in runs.values() if v.get("variants") == 5]
    lines = [
        "# Replay of the vLLM demo runs",
        "",
        f"`python -m bench.replay`, {seconds:.0f} s in all (demo training included when generated).",
        "",
        f"**{passed} of {total} replays name the change their scenario calls for.** "
        + (
            f"Five-variant replays took {min(times):.0f}-{max(times):.0f} s (goal: under {GOAL_S:.0f} s)."
            if times
            else ""
        ),
        "",
        "Each row: the verdict (✓ when it is the scenario's own fix, or nothing to change for a healthy "
        "run and for faults outside the engine's settings), the replayed mean |d| under the recorded "
        "settings and with the verdict's change, the level to reach (reference run's replay or this "
        "run's floor), the mean |d| the run logged for the same sequences, how far the recorded-"
        "settings replay is from the logged engine logprobs, and the wall time.",
        "",
    ]
    for seed, runs in sorted(results.items()):
        lines += [
            f"## seed {seed}",
            "",
            "| run | verdict | replayed: recorded → changed | level to reach | logged | reproduced "
            "| variants | time |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, v in runs.items():
            mark = "✓" if v["ok"] else "✗"
            if "error" in v:
                lines.append(f"| {name} | ✗ failed: {v['error']} | | | | | | {v['seconds']:.0f} s |")
                continue
            lines.append(
                f"| {name} | {mark} {_changes(v['changes'])} | {_num(v['recorded'])} → {_num(v['fixed'])} | "
                f"{_num(v['target'])} ({v['target_kind']}) | {_num(v['logged'])} | {_num(v['reproduced'])} | "
                f"{v['variants']} | {v['seconds']:.0f} s |"
            )
        lines.append("")
    lines += _report.notes_and_machine(notes)
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _report.benchmark_parser("replay", __doc__)
    parser.add_argument(
        "--data", type=_demo_stores.existing_dir, default=None, help="existing vLLM demo stores (vllm-sSEED)"
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--scenarios", nargs="+", choices=list(EXPECTED), default=None)
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    args = parser.parse_args(argv)
    if importlib.util.find_spec("vllm") is None:
        print("bench.replay needs vLLM (pip install -r requirements-vllm.txt)", file=sys.stderr)
        return 2
    scenarios = args.scenarios or [n for n in EXPECTED if supported(SCENARIOS[n], "vllm")]
    start = time.perf_counter()
    notes: list[str] = []
    results: dict[int, dict[str, dict[str, Any]]] = {}
    make = functools.partial(
        _demo_stores.generate, engines=["vllm"], seeds=args.seeds, scenarios=scenarios, steps=args.steps
    )
    with _demo_stores.demo_data(args.data, make, "replay") as (data, made_notes):
        notes += made_notes
        for seed in args.seeds:
            root = data / f"vllm-s{seed}"
            for name in scenarios:
                print(f"replaying {root.name}/{name} ...", file=sys.stderr, flush=True)
                rep, seconds = replay_run(root, f"demo-vllm-{name}")
                results.setdefault(seed, {})[name] = judge(name, rep, seconds)
    text = report(results, time.perf_counter() - start, notes)
    passed = all(v["ok"] for runs in results.values() for v in runs.values())
    return _report.finish(args, text, results, 0 if passed else 1)


if __name__ == "__main__":
    sys.exit(main())
