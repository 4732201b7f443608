"""Shared helpers: every test writes real Parquet files under its own tmp_path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
LOGPROBE = str(Path(sys.executable).with_name("logprobe"))  # the installed command, as a user runs it


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The torch-engine demo's runs, one per scenario (about 1.5 minutes), trained once for every test
    that reads them."""
    from logprobe.collectors.demo import run_demo

    root = tmp_path_factory.mktemp("demo")
    run_demo(root, engine="torch")  # every scenario, default steps
    return root


@pytest.fixture(autouse=True)
def _isolated_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Nothing a test does may land in the developer's ./logprobe-data.
    monkeypatch.setenv("LOGPROBE_DIR", str(tmp_path / "default-root"))
    # ... nor in the developer's ~/.cache/logprobe (kept scans, object-store copies).
    monkeypatch.setenv("LOGPROBE_CACHE_DIR", str(tmp_path / "cache"))


def run_python(
    code: str, *args: str, timeout: float = 120, env: dict[str, str] | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter (a separate writer process), from the repo root."""
    proc = subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"child failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def logprobe_cli(*args: str | Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run the installed ``logprobe`` command; a failure raises with the end of its output."""
    proc = subprocess.run([LOGPROBE, *map(str, args)], capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"logprobe {args[0]} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def scenario_args(names: list[str]) -> list[str]:
    """``logprobe demo``'s options for these scenarios."""
    return [arg for name in names for arg in ("--scenarios", name)]


def logprobe_json(*args: str | Path, timeout: float = 600) -> Any:
    """``logprobe ... --format json``, parsed."""
    return json.loads(logprobe_cli(*args, "--format", "json", timeout=timeout).stdout)


def json_numbers(value: Any, path: str = "") -> list[tuple[str, float]]:
    """Every number in a JSON value with where it is (booleans are not numbers here): what the
    benchmark smoke tests check to be finite and positive."""
    if isinstance(value, dict):
        return [item for key, inner in value.items() for item in json_numbers(inner, f"{path}.{key}")]
    if isinstance(value, list):
        return [item for i, inner in enumerate(value) for item in json_numbers(inner, f"{path}[{i}]")]
    if isinstance(value, int | float) and not isinstance(value, bool):
        return [(path, float(value))]
    return []
