"""Diagnosis table: does ``monitor.diagnose`` name each demo fault, on both engines and several seeds?

Every demo scenario carries the cause it demonstrates and the step its fault starts
(``collectors.demo.SCENARIOS``). For each engine and seed this trains every scenario the engine can
play (``python -m collectors.demo``, in subprocesses, into a temporary directory; ``--data DIR``
reuses stores laid out as ``ENGINE-sSEED``), diagnoses each run, and checks the issue's bar:

- a fault run: the right cause ranked first, its confidence above every other cause's, and its first
  step within 3 steps of the fault's onset;
- ``reference`` and ``all-fixed``: no cause at all.

The report is a table per engine (one cell per seed: the top cause, its confidence, the margin over
the runner-up and the first step), the evidence sentence of the first seed, and the total.

Run it from the repository root:
``python -m bench.diagnosis [--data DIR] [--engines torch vllm] [--seeds 0 1 2] [--out PATH] [--json PATH]``.
"""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Sequence
from typing import Any

from bench import _demo_stores, _report
from logprobe import monitor, storage
from logprobe.collectors.demo import DEFAULT_STEPS, SCENARIOS
from logprobe.collectors.demo._loop import supported

ENGINES = ("torch", "vllm")
WITHIN = 3  # steps after the onset by which the cause must be named


def judge(ranked: Sequence[monitor.Diagnosis], cause: str | None, onset: int) -> dict[str, Any]:
    """One run's verdict against the cause its scenario demonstrates."""
    top = ranked[0] if ranked else None
    runner_up = ranked[1].confidence if len(ranked) > 1 else 0.0
    if cause is None:
        ok = top is None
    else:
        ok = (
            top is not None
            and top.cause == cause
            and top.confidence > runner_up
            and top.step_first is not None
            and top.step_first - onset <= WITHIN
        )
    return {
        "ok": ok,
        "top": top.cause if top else None,
        "confidence": top.confidence if top else None,
        "runner_up": runner_up if top else None,
        "step_first": top.step_first if top else None,
        "evidence": top.evidence if top else "",
        "causes": [d.as_dict() for d in ranked],
    }


def diagnose_store(store: storage.Store, engine: str, steps: int) -> dict[str, dict[str, Any]]:
    runs = {r["run_id"] for r in storage.list_runs(store).to_pylist()}
    out = {}
    for name, scenario in SCENARIOS.items():
        run_id = f"demo-{engine}-{name}"
        if run_id not in runs:
            continue
        onset = steps // 2 if scenario.onset < 0 else scenario.onset
        verdict = judge(monitor.diagnose(store, run_id), scenario.cause, onset)
        out[name] = {"expected": scenario.cause, "onset": onset, **verdict}
    return out


def cell(v: dict[str, Any]) -> str:
    mark = "✓" if v["ok"] else "✗"
    if v["top"] is None:
        return f"{mark} healthy"
    return f"{mark} `{v['top']}` {v['confidence']:.2f} (next {v['runner_up']:.2f}) @{v['step_first']}"


def report(results: dict[str, dict[int, dict[str, dict]]], seconds: float, notes: list[str]) -> str:
    lines = [
        "# Diagnosis of the demo faults",
        "",
        f"`python -m bench.diagnosis`, {seconds:.0f} s (diagnosis only; the demo runs are generated "
        "separately or passed with `--data`).",
        "",
        "Each cell: ✓ when the scenario's own cause is ranked first with a confidence above every "
        f"other cause's and named within {WITHIN} steps of the fault's onset (healthy runs: no cause); "
        "then the top cause, its confidence, the runner-up's confidence and the step it is named from.",
        "",
    ]
    passed = total = 0
    for engine, by_seed in results.items():
        seeds = sorted(by_seed)
        lines += [
            f"## {engine}",
            "",
            "| scenario | expected | onset | " + " | ".join(f"seed {s}" for s in seeds) + " |",
        ]
        lines.append("|---|---|---|" + "---|" * len(seeds))
        names = [n for n in SCENARIOS if any(n in by_seed[s] for s in seeds)]
        for name in names:
            cells = []
            for s in seeds:
                v = by_seed[s].get(name)
                cells.append(cell(v) if v else "not run")
                if v:
                    passed += v["ok"]
                    total += 1
            first = next(by_seed[s][name] for s in seeds if name in by_seed[s])
            expected = f"`{first['expected']}`" if first["expected"] else "healthy"
            lines.append(f"| {name} | {expected} | {first['onset']} | " + " | ".join(cells) + " |")
        lines += ["", "Evidence (first seed):", ""]
        for name in names:
            first = next(by_seed[s][name] for s in seeds if name in by_seed[s])
            if first["evidence"]:
                lines.append(f"- **{name}**: {first['evidence']}")
        lines.append("")
    lines.insert(5, f"**{passed} of {total} runs diagnosed as their scenario says.**\n")
    lines += _report.notes_and_machine(notes)
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _report.benchmark_parser("diagnosis", __doc__)
    parser.add_argument(
        "--data", type=_demo_stores.existing_dir, default=None, help="existing demo stores (ENGINE-sSEED)"
    )
    parser.add_argument("--engines", nargs="+", choices=ENGINES, default=list(ENGINES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="the demo's steps per run")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    notes: list[str] = []
    results: dict[str, dict[int, dict[str, dict]]] = {}
    make = functools.partial(_demo_stores.generate, engines=args.engines, seeds=args.seeds)
    with _demo_stores.demo_data(args.data, make, "diagnosis") as (data, made_notes):
        notes += made_notes
        for engine in args.engines:
            for seed in args.seeds:
                root = data / f"{engine}-s{seed}"
                if not root.is_dir():
                    notes.append(f"no demo store {root}")
                    continue
                with storage.Store(root) as store:
                    results.setdefault(engine, {})[seed] = diagnose_store(store, engine, args.steps)
            skipped = [n for n, s in SCENARIOS.items() if not supported(s, engine)]
            if skipped and engine in results:
                notes.append(f"{engine} cannot play {', '.join(skipped)} (see `collectors.demo`)")
    text = report(results, time.perf_counter() - start, notes)
    failed = sum(
        not v["ok"] for by_seed in results.values() for runs in by_seed.values() for v in runs.values()
    )
    return _report.finish(args, text, results, 1 if failed else 0)


if __name__ == "__main__":
    sys.exit(main())
