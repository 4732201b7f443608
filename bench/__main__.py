"""``python -m bench`` (``make bench``): every benchmark in turn, then one ``bench/RESULTS.md``.

Each benchmark is its own script and process (``python -m bench.<name>``), writes its own report
under ``bench/results/`` and can be rerun alone; this runner only sequences them, times them, keeps
going when one fails (the failure is written into the results, not hidden), and assembles one
file with the machine description on top. Benchmarks run one at a time: on a 2-core machine, two at
once would measure each other. ``--assemble-only`` runs nothing and rebuilds the file from the
reports already there, for after one benchmark was rerun alone.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from bench._report import machine_info

HERE = Path(__file__).parent
RESULTS = HERE / "RESULTS.md"
# (module, what it answers): the order of the assembled file.
BENCHMARKS = (
    ("write_path", "Run.log latency and read-back against the bare pyarrow floor"),
    ("trackers", "write and read paths side by side with W&B, MLflow, TensorBoard, Trackio, Aim"),
    ("chart_path", "the dashboard's first chart and live refresh, against TensorBoard and MLflow readers"),
    ("in_loop", "log_mismatch inside the training loop, against per-metric reductions and a fused floor"),
    ("scale", "run list, chart and cross-run queries as runs and steps grow"),
    ("live_latency", "from log() to visible in storage, and to an alert firing"),
    ("store_size", "bytes per million steps before and after compaction and token retention"),
    ("object_store", "the same run written to and read from a local S3 server (moto) and local disk"),
    ("monitor", "the monitor's full scan, incremental tick and the Runs page, against one DuckDB pass"),
    ("detection", "false alarms per 10,000 healthy steps, detection delays, and the demo faults caught"),
    ("diagnosis", "the right cause named first for every demo scenario, both engines, three seeds"),
    ("replay", "replay names the setting that restores parity on every vLLM demo run, three seeds"),
)


def run(names: Sequence[str]) -> list[tuple[str, str, float, int]]:
    """Run each named benchmark; returns (name, purpose, seconds, exit code)."""
    out: list[tuple[str, str, float, int]] = []
    for name, purpose in BENCHMARKS:
        if name not in names:
            continue
        report = HERE / "results" / f"{name}.md"
        report.parent.mkdir(exist_ok=True)
        print(f"== bench.{name}: {purpose}", file=sys.stderr, flush=True)
        start = time.perf_counter()
        code = subprocess.run([sys.executable, "-m", f"bench.{name}", "--out", str(report)]).returncode
        out.append((name, purpose, time.perf_counter() - start, code))
    return out


def earlier_times(text: str) -> dict[str, str]:
    """Each benchmark's wall time in an earlier RESULTS.md, so that assembling without rerunning a
    benchmark keeps how long its report took instead of leaving the cell blank."""
    times = {}
    for match in re.finditer(r"^\| `bench\.(\w+)` \|[^|\n]*\| ([\d,]+ s) \| ok \|$", text, re.M):
        times[match.group(1)] = match.group(2)
    return times


def assemble(ran: Sequence[tuple[str, str, float, int]], earlier: dict[str, str] | None = None) -> str:
    """RESULTS.md: what ran and how long it took, the machine, then each report a heading level down."""
    lines = [
        "# logprobe benchmarks",
        "",
        "Written by `python -m bench` (`make bench`); every section below is written by its own script",
        "(`python -m bench.<name>`, report in `bench/results/<name>.md`), which says how it measures.",
        "",
        "| benchmark | what it answers | wall time | status |",
        "|---|---|---|---|",
    ]
    timed = {name: (seconds, code) for name, _, seconds, code in ran}
    for name, purpose in BENCHMARKS:
        report = HERE / "results" / f"{name}.md"
        if name in timed:
            seconds, code = timed[name]
            status = "ok" if code == 0 else f"FAILED (exit {code}); its section may be stale"
            lines.append(f"| `bench.{name}` | {purpose} | {seconds:,.0f} s | {status} |")
        else:
            status = "not rerun: its section is from an earlier run" if report.exists() else "no report"
            took = (earlier or {}).get(name, "") if report.exists() else ""
            lines.append(f"| `bench.{name}` | {purpose} | {took} | {status} |")
    lines += ["", "## Machine (this run of the runner)", ""] + [
        f"- {k}: {v}" for k, v in machine_info().items()
    ]
    for name, _ in BENCHMARKS:
        report = HERE / "results" / f"{name}.md"
        if not report.exists():
            continue
        lines.append("")
        for line in report.read_text(encoding="utf-8").splitlines():
            lines.append("#" + line if line.startswith("#") else line)
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    names = [name for name, _ in BENCHMARKS]
    parser.add_argument("--only", nargs="*", choices=names, default=names, help="run only these")
    parser.add_argument(
        "--assemble-only",
        action="store_true",
        help="run nothing: rebuild RESULTS.md from the reports already in bench/results/",
    )
    args = parser.parse_args(argv)
    earlier = earlier_times(RESULTS.read_text(encoding="utf-8")) if RESULTS.exists() else {}
    ran = [] if args.assemble_only else run(args.only)
    RESULTS.write_text(assemble(ran, earlier), encoding="utf-8")
    print(f"wrote {RESULTS}", file=sys.stderr)
    return max((code for *_, code in ran), default=0)


if __name__ == "__main__":
    sys.exit(main())
