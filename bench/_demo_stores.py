"""The demo stores that the judgement benchmarks (detection, diagnosis, replay) read: one store per
engine and seed, named ``ENGINE-sSEED`` under one folder. Either the folder is given (``--data``,
stores generated earlier, which saves the tens of minutes the demo takes) or the stores are
generated into a temp folder by running the demo for real, as a user would."""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path


def existing_dir(text: str) -> Path:
    """An argparse type for ``--data``: a folder that exists, or a usage error naming it."""
    path = Path(text)
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is not a directory")
    return path


def run_demo(data: Path, name: str, demo_args: Sequence[str]) -> list[str]:
    """``python -m logprobe.collectors.demo ARGS --root data/NAME``, its output kept in
    ``data/NAME.log``; a note if it failed (the report says what is missing, rather than stopping)."""
    cmd = [sys.executable, "-m", "logprobe.collectors.demo", *demo_args, "--root", str(data / name)]
    print(f"generating {name} ...", file=sys.stderr, flush=True)
    with open(data / f"{name}.log", "w", encoding="utf-8") as log:
        code = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode
    return [f"the demo {name} failed (exit {code}); see {name}.log"] if code else []


def generate(
    data: Path,
    engines: Sequence[str],
    seeds: Sequence[int],
    scenarios: Sequence[str] = (),
    steps: int | None = None,
) -> list[str]:
    """One store per engine and seed (``scenarios``: all the demo's when empty); notes on what
    was skipped or failed."""
    notes = []
    for engine in engines:
        if engine == "vllm" and importlib.util.find_spec("vllm") is None:
            notes.append("vllm is not installed (the vllm extra): no vLLM demo runs generated")
            continue
        for seed in seeds:
            args = [*scenarios, "--engine", engine, "--seed", str(seed)]
            notes += run_demo(data, f"{engine}-s{seed}", args + (["--steps", str(steps)] if steps else []))
    return notes


@contextlib.contextmanager
def demo_data(
    given: Path | None, make: Callable[[Path], list[str]], name: str
) -> Iterator[tuple[Path, list[str]]]:
    """The folder of demo stores and notes on what could not be made: ``given`` as it is, or a temp
    folder that ``make`` fills, removed when the benchmark is done with it."""
    if given is not None:
        yield given, []
        return
    with tempfile.TemporaryDirectory(prefix=f"logprobe-{name}-") as tmp:
        yield Path(tmp), make(Path(tmp))
