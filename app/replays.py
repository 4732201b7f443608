"""Replays started from the dashboard: each is a child process (``python -m collectors.replay``)
with its progress and report in files, so a replay outlives the page that started it and any tab
can follow it.

Files live under the logprobe cache (``storage.cache_root()/replays/<root hash>/<job>/``):
``progress.jsonl`` (one JSON event per line, from the child), ``report.json`` once done,
``stderr.log`` and ``pid``. The dashboard never imports torch or vLLM; it only reads these.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from logprobe import storage


@dataclass(frozen=True)
class Job:
    run: str
    folder: Path

    @property
    def report_path(self) -> Path:
        return self.folder / "report.json"

    def events(self) -> list[dict[str, Any]]:
        try:
            lines = (self.folder / "progress.jsonl").read_text().splitlines()
        except FileNotFoundError:
            return []
        out = []
        for line in lines:
            try:
                event = json.loads(line)
            except ValueError:
                continue  # a line being written
            if isinstance(event, dict):
                out.append(event)
        return out

    def report(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.report_path.read_text())
        except (FileNotFoundError, ValueError):
            return None

    def state(self) -> str:
        """``done``, ``failed`` or ``running``."""
        if self.report_path.exists():
            return "done"
        if any(e.get("phase") == "error" for e in self.events()) or not self._alive():
            return "failed"
        return "running"

    def error(self) -> str:
        for e in reversed(self.events()):
            if e.get("phase") == "error":
                return str(e.get("error"))
        try:
            tail = (self.folder / "stderr.log").read_text().strip().splitlines()[-5:]
        except FileNotFoundError:
            tail = []
        return "\n".join(tail) or "the replay process ended without a report"

    def progress(self) -> tuple[float, str]:
        """Fraction done and what is running now."""
        events = [e for e in self.events() if e.get("phase") == "variant"]
        if not events:
            return 0.0, "reading the run and scoring with the trainer"
        last = events[-1]
        total = max(int(last.get("total", 1)), 1)
        return min(
            int(last.get("index", 0)) / total, 1.0
        ), f"variant {last['index'] + 1}/{total}: {last['name']}"

    def _alive(self) -> bool:
        try:
            pid = int((self.folder / "pid").read_text())
        except (FileNotFoundError, ValueError):
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return _not_zombie(pid)


def available() -> str | None:
    """Why a replay cannot start from here (None: it can): it needs torch and vLLM."""
    missing = [m for m in ("torch", "transformers", "vllm") if importlib.util.find_spec(m) is None]
    if missing:
        return (
            f"replay drives a vLLM engine and the trainer's forward pass, and this environment lacks "
            f"{', '.join(missing)} (pip install -r requirements-vllm.txt, or `make demo-vllm`)"
        )
    return None


def folder(root: str) -> Path:
    return storage.cache_root() / "replays" / hashlib.sha256(str(root).encode()).hexdigest()[:12]


def jobs(root: str, run: str) -> list[Job]:
    """This run's replays started from the dashboard, newest first."""
    base = folder(root)
    if not base.is_dir():
        return []
    found = [Job(run, p) for p in base.iterdir() if p.is_dir() and p.name.rsplit("@", 1)[0] == run]
    return sorted(found, key=lambda j: j.folder.name, reverse=True)


def command(root: str | Path, run: str) -> list[str]:
    """The replay of ``run`` as a child process that prints its report as JSON (the trainer-side
    code runs there: the dashboard never imports it)."""
    return [
        sys.executable,
        "-m",
        "logprobe.collectors.replay",
        "--root",
        str(root),
        "--run",
        run,
        "--format",
        "json",
    ]


def start(root: str, run: str) -> Job:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
    job = Job(run, folder(root) / f"{run}@{stamp}")
    job.folder.mkdir(parents=True)
    args = command(root, run)
    args += ["--output", str(job.report_path), "--progress", str(job.folder / "progress.jsonl")]
    with open(job.folder / "stderr.log", "wb") as log:
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
    (job.folder / "pid").write_text(str(proc.pid))
    _children.append(proc)  # reaped by ``_not_zombie`` so a finished child does not linger
    return job


_children: list[subprocess.Popen[bytes]] = []


def _not_zombie(pid: int) -> bool:
    for proc in list(_children):
        if proc.pid == pid and proc.poll() is not None:
            _children.remove(proc)
            return False
    try:
        status = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except (FileNotFoundError, IndexError):
        return True
    return status != "Z"
