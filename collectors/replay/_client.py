"""The trainer's side of the replay protocol: one worker process per replay, any interpreter.

The worker (``worker.py`` beside this file, protocol in its docstring) is started as a script, not
as a module, so the interpreter that hosts it needs vLLM but not logprobe: ``--python`` can point
at a virtualenv holding another vLLM release.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import IO, Any

WORKER = Path(__file__).with_name("worker.py")


def engine_python(spec: str) -> str:
    """An interpreter path, or ``vllm==RELEASE`` for the virtualenv ``make engines`` built for that
    release (under ``$LOGPROBE_ENGINES``, default ``.engines`` in this checkout)."""
    if not spec.startswith("vllm=="):
        return spec
    release = spec.removeprefix("vllm==")
    home = Path(os.environ.get("LOGPROBE_ENGINES") or Path(__file__).resolve().parents[2] / ".engines")
    if not (home / f"vllm-{release}" / ".collectors").exists():
        raise WorkerError(
            f"vLLM {release} is not installed under {home} with logprobe's collectors: run `make engines`"
        )
    return str(home / f"vllm-{release}" / "bin" / "logprobe-python")


class WorkerError(RuntimeError):
    """The worker answered a request with an error, or died; the message says which and why."""


class EngineWorker:
    """A running worker; each method is one request and returns its reply."""

    def __init__(
        self, python: str | None = None, env: dict[str, str] | None = None, args: list[str] | None = None
    ) -> None:
        """``args`` start another worker that speaks the same framing (``ok`` and ``error`` in each
        reply), such as the demo's rollout worker; default: the replay worker script."""
        self.python = python or sys.executable
        self.what = "the replay worker" if args is None else "the worker"
        self._log: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 (vLLM's chatter, for error messages; closed in close())
        try:
            self._proc = subprocess.Popen(
                [self.python, *(args if args is not None else [str(WORKER)])],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self._log,
                env=env,
                text=True,
                bufsize=1,
            )
        except OSError as exc:
            raise WorkerError(f"cannot start {self.what} with {self.python}: {exc}") from exc
        self.info = self.request("hello")

    def request(self, op: str, **fields: Any) -> dict[str, Any]:
        assert self._proc.stdin is not None and self._proc.stdout is not None
        try:
            self._proc.stdin.write(json.dumps({"op": op, **fields}) + "\n")
            self._proc.stdin.flush()
            line = self._proc.stdout.readline()
        except (BrokenPipeError, OSError):
            line = ""
        if not line:
            self._proc.wait(timeout=30)
            raise WorkerError(
                f"{self.what} ({self.python}) exited with code {self._proc.returncode} during "
                f"{op!r}; its last output:\n{self.log_tail()}"
            )
        reply = json.loads(line)
        if not reply.pop("ok", False):
            raise WorkerError(f"{op}: {reply.get('error')}")
        return reply

    def log_tail(self, lines: int = 15) -> str:
        self._log.seek(0)
        text = self._log.read().decode(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def close(self) -> None:
        if self._proc.poll() is None:
            with contextlib.suppress(WorkerError):
                self.request("exit")
            try:
                self._proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._log.close()

    def __enter__(self) -> EngineWorker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
