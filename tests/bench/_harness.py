"""The one harness of the benchmark smoke tests: run a benchmark as a person does, check what every
benchmark promises, and hand back its report and numbers for the test's own assertions.

Every benchmark ends the same way (``bench/_report.py``: the report to ``--out``, the numbers to
``--json``, the report on stdout), so what that promises is checked here once: exit status 0, the
report's title, the same report on stdout, the exact command recorded in it (for the benchmarks
that record it), and every reported number finite and, unless a test says where it may not be,
positive. Speed is never asserted: CI machines are shared and noisy.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tests.conftest import json_numbers

REPO = Path(__file__).resolve().parents[2]


def run_benchmark(
    module: str,
    args: Sequence[str],
    tmp_path: Path,
    *,
    title: str,
    records: str | None = None,
    timeout: float = 300,
) -> tuple[str, dict[str, Any]]:
    """``python -m bench.<module> ARGS --out=... --json=...`` from the repository root, in a subprocess.

    Asserts the run succeeded, that the report starts with ``title`` and is what stdout carries,
    and, given ``records``, that the report shows that part of the command line (the exact command
    is recorded so that a reader can rerun it). Returns the report and the loaded numbers.
    """
    out, numbers = tmp_path / f"{module}.md", tmp_path / f"{module}.json"
    proc = subprocess.run(
        [sys.executable, "-m", f"bench.{module}", *args, f"--out={out}", f"--json={numbers}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    report = out.read_text(encoding="utf-8")
    assert report.startswith(title), report[:200]
    assert report in proc.stdout  # stdout carries the same report
    if records is not None:
        assert records in report, records
    return report, json.loads(numbers.read_text(encoding="utf-8"))


def _nowhere(where: str) -> bool:
    return False


def assert_numbers(
    value: Any,
    *,
    zero_ok: Callable[[str], bool] = _nowhere,
    negative_ok: Callable[[str], bool] = _nowhere,
    what: str = "",
) -> None:
    """Every number in ``value`` (a loaded JSON value) is finite, and positive: a zero or a NaN means
    a measurement broke. Where ``zero_ok(where)`` it may be 0 (a count of findings on a healthy
    run); where ``negative_ok(where)`` it may have any sign (a slope, a difference of two clocks).
    ``where`` is the number's path as ``json_numbers`` writes it, e.g. ``.results[0].p50_ms``."""
    found = json_numbers(value)
    assert found, f"{what}: no numbers"
    for where, number in found:
        assert math.isfinite(number), (what, where, number)
        if negative_ok(where):
            continue
        if zero_ok(where):
            assert number >= 0, (what, where, number)
        else:
            assert number > 0, (what, where, number)
