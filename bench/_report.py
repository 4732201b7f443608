"""What every benchmark's report shares: Markdown tables, ratios, the machine, the command, the ending.

Each ``bench/<name>.py`` measures one thing and renders its own sections. The parts a reader
compares from one report to the next (the machine table, the command that wrote the report, the
``--out`` / ``--json`` options and what they write) live here, so that they read and behave the
same in every report and a change to them is made once.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import duckdb
import numpy as np
import pyarrow as pa

import logprobe

T = TypeVar("T")

RESULTS_DIR = Path(__file__).parent / "results"


class BenchmarkError(RuntimeError):
    """A benchmark's own checks failed (rows lost or changed, contenders that disagree, a watcher
    that saw something else than was logged): its numbers are void, so it stops instead of reporting."""


# ---------------------------------------------------------------------------------------- Markdown


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    """A Markdown table's lines (cells written with ``str``)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]


def ratio(a: float, b: float) -> str:
    """``a / b`` as ``3.2x`` (thousands grouped), or ``n/a`` when ``b`` is not positive."""
    return f"{a / b:,.1f}x" if b > 0 else "n/a"


def command_section(command: str) -> list[str]:
    """The exact command that wrote the report, so that a reader can rerun it."""
    return ["Command (from the repository root):", "", "```", command, "```", ""]


def machine_section(machine: Mapping[str, str]) -> list[str]:
    """The "## Machine" section: what a reader needs to compare the numbers with another run."""
    return ["## Machine", "", *markdown_table(["", ""], [[key, value] for key, value in machine.items()]), ""]


Verdict = tuple[str, str, str, bool]  # (goal, limit, measured, met)


def goals_section(verdicts: Sequence[Verdict], measured: str = "measured (medians)") -> list[str]:
    """The "## Goals" section: each goal, its limit, what was measured and whether it was met."""
    rows = [[goal, limit, value, "MET" if met else "MISSED"] for goal, limit, value, met in verdicts]
    return ["## Goals", "", *markdown_table(["goal", "limit", measured, "verdict"], rows), ""]


def fields(report: object, *names: str) -> dict[str, Any]:
    """The named attributes of a report, as its JSON's opening keys: the sizes it ran at, the
    command and the machine, which every benchmark records before its own numbers."""
    return {name: getattr(report, name) for name in names}


def goals_json(verdicts: Sequence[Verdict]) -> list[dict[str, Any]]:
    """The goals as the numbers file carries them."""
    keys = ("goal", "limit", "measured", "met")
    return [dict(zip(keys, verdict, strict=True)) for verdict in verdicts]


def notes_and_machine(notes: Sequence[str]) -> list[str]:
    """The tail of a report: its notes (if any), then the machine it ran on."""
    lines = ["## Notes", "", *[f"- {note}" for note in notes], ""] if notes else []
    return [*lines, *machine_section(machine_info())]


# ---------------------------------------------------------------------------------------- machine


def machine_info() -> dict[str, str]:
    """What a reader needs to compare these numbers with another run of the benchmark."""
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    return {
        "date (UTC)": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "CPU": cpu,
        "cores": f"{os.cpu_count()} (usable by this process: {usable})",
        "load average (1, 5, 15 min) at start": load,
        "OS": platform.platform(),
        "Python": f"{platform.python_implementation()} {platform.python_version()}",
        "pyarrow": pa.__version__,
        "duckdb": duckdb.__version__,
        "numpy": np.__version__,
        "logprobe": f"{logprobe.__version__} (git {git_commit()})",
        "temp dir": tempfile.gettempdir(),
    }


def git_commit() -> str:
    """The checkout's short commit, marked when tracked files have uncommitted changes (numbers from
    a dirty tree are not the commit's numbers)."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head}{' + uncommitted changes' if dirty else ''}"


# ---------------------------------------------------------------------------------------- CLI


def positive_int(text: str) -> int:
    """An argparse type for counts (steps, repeats, runs): zero or less is a usage error."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def comma_list(item: Callable[[str], T], what: str) -> Callable[[str], list[T]]:
    """An argparse type for a comma-separated list such as ``1000,16000``, each part read by
    ``item`` (which raises ``ValueError`` or ``ArgumentTypeError`` on a bad part); an empty list
    or a bad part is a usage error that names ``what`` was expected."""

    def parse(text: str) -> list[T]:
        expected = f"expected {what} separated by commas, got {text!r}"
        try:
            values = [item(part.strip()) for part in text.split(",") if part.strip()]
        except (ValueError, argparse.ArgumentTypeError) as exc:
            raise argparse.ArgumentTypeError(f"{expected}: {exc}") from None
        if not values:
            raise argparse.ArgumentTypeError(expected)
        return values

    return parse


def benchmark_parser(name: str, doc: str) -> argparse.ArgumentParser:
    """The command line every benchmark starts from: ``python -m bench.<name>``, described by the
    first line of its docstring, with ``--out`` (the Markdown report, by default
    ``bench/results/<name>.md``, which ``python -m bench`` assembles) and ``--json`` (the numbers,
    for a test or a script to check)."""
    parser = argparse.ArgumentParser(prog=f"python -m bench.{name}", description=doc.splitlines()[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=RESULTS_DIR / f"{name}.md",
        help=f"Markdown report (default bench/results/{name}.md)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers as JSON here")
    return parser


def add_count(parser: argparse.ArgumentParser, flag: str, default: int, what: str) -> None:
    """A size option (steps, runs, repeats): a whole number of at least 1, whose help says
    ``what`` it counts and the default a plain run uses, so a reader of ``--help`` can tell the
    sizes of the committed report."""
    parser.add_argument(flag, type=positive_int, default=default, help=f"{what} (default %(default)s)")


def add_list(
    parser: argparse.ArgumentParser, flag: str, item: Callable[[str], Any], default: Sequence[Any], what: str
) -> None:
    """A comma-separated option (sizes to sweep, models to time), each part read by ``item``; its
    help says ``what`` the parts are and the default a plain run uses, as ``add_count`` does."""
    parser.add_argument(
        flag,
        type=comma_list(item, what),
        default=list(default),
        help=f"{what}, comma-separated (default {','.join(map(str, default))})",
    )


def parse_command(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None
) -> tuple[argparse.Namespace, str]:
    """The parsed arguments and the command line the report records (``parser.prog`` is
    ``python -m bench.<name>``), quoted so that it can be pasted back into a shell."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    return parser.parse_args(args_list), shlex.join([*parser.prog.split(), *args_list])


def finish(args: argparse.Namespace, text: str, numbers: Mapping[str, Any], code: int = 0) -> int:
    """The end of every benchmark: the report to ``--out``, the numbers to ``--json`` (strict JSON:
    a NaN is a broken measurement, refused here rather than written), the report on stdout;
    returns ``code``, the benchmark's exit status."""
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(numbers, indent=2, allow_nan=False), encoding="utf-8")
    print(text)
    print(f"(written to {args.out})")
    return code
