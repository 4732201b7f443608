"""The reliability suite's figures: what each test survived, printed at the end of the run.

A test asks for the ``figures`` fixture and records what it measured (kills survived, rows lost,
writers and rows/s held, fuzz cases tried). The terminal summary prints them all, and when
``$LOGPROBE_FIGURES`` names a file they are also written there as JSON, which is where the README's
reliability section takes its numbers from.

``LOGPROBE_LONG=1`` (``make reliability-long``) runs the long variants: the full 50 kills, 32 writers
for 60 s, more fuzz cases. Without it the suite runs its short version, sized for CI.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
import types
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

LONG = os.environ.get("LOGPROBE_LONG") == "1"
_FIGURES: dict[str, dict[str, object]] = {}


def scale(short: float, long: float) -> float:
    """The short (CI) or long (``LOGPROBE_LONG=1``) size of a test."""
    return long if LONG else short


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Callable[..., None]:
    """``figures(name, value, ...)``: record one measured figure under this test's name."""

    def record(**values: object) -> None:
        _FIGURES.setdefault(request.node.name, {}).update(values)

    return record


@pytest.fixture(scope="session")
def _forkserver_context() -> Iterator[multiprocessing.context.ForkServerContext]:
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["collectors", "tests.reliability._children"])
    yield context


@pytest.fixture
def forkserver(
    _forkserver_context: multiprocessing.context.ForkServerContext, monkeypatch: pytest.MonkeyPatch
) -> multiprocessing.context.ForkServerContext:
    """Child processes forked from a server that has imported ``collectors`` (see ``_children``).

    A child re-runs the parent's ``__main__`` file first. Streamlit's AppTest (the dashboard tests)
    leaves ``__main__`` pointing at a temp script of its own, which then fails in every child; an
    empty ``__main__`` for the test's duration keeps children to the target they are given.
    """
    monkeypatch.setitem(sys.modules, "__main__", types.ModuleType("__main__"))
    return _forkserver_context


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _FIGURES:
        return
    mode = "long" if LONG else "short"
    terminalreporter.section(f"logprobe reliability figures ({mode} version)")
    for test, values in sorted(_FIGURES.items()):
        shown = ", ".join(f"{k}={_fmt(v)}" for k, v in values.items())
        terminalreporter.write_line(f"{test}: {shown}")
    if target := os.environ.get("LOGPROBE_FIGURES"):
        Path(target).write_text(json.dumps({"mode": mode, "figures": _FIGURES}, indent=2, default=str))


def _fmt(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
