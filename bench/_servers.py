"""The local servers a benchmark or a browser test starts for itself (``logprobe ui`` for the Runs
page and the dashboard tests, moto's S3 server for the object store): a free port to start one on,
``logprobe ui`` started the one way they all start it, and a sure way to stop a server, so that a
failed measurement never leaves one holding the port or the machine's cores."""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop(proc: subprocess.Popen) -> None:
    """Ask the server to stop, and kill it if it has not within 10 s."""
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def serve_ui(
    root: Path,
    *args: str,
    log: Path | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout_s: float = 90,
) -> tuple[subprocess.Popen, str]:
    """``logprobe ui --root ROOT ARGS`` on a free port (its default bind address), returned with
    its URL once Streamlit's health check answers. Its output goes to ``log`` (a temp file if not
    given) rather than a pipe nobody drains; if it never answers, the error carries the log's tail."""
    port = free_port()
    logprobe = str(Path(sys.executable).with_name("logprobe"))
    command = [logprobe, "ui", "--root", str(root), "--port", str(port), *args]
    return _serve_streamlit(command, port, log, env, cwd, timeout_s)


def serve_floor_page(runs: int, log: Path | None = None) -> tuple[subprocess.Popen, str]:
    """``bench/_floor_page.py`` (one table of ``runs`` run ids) with the flags ``logprobe ui`` gives
    Streamlit, on a free port: the floor the Runs page is compared with."""
    from logprobe.app.cli import streamlit_command

    port = free_port()
    command = streamlit_command(Path(__file__).with_name("_floor_page.py"), "127.0.0.1", port, str(runs))
    return _serve_streamlit(command, port, log, None, None, 90)


def _serve_streamlit(
    command: list[str],
    port: int,
    log: Path | None,
    env: Mapping[str, str] | None,
    cwd: Path | None,
    timeout_s: float,
) -> tuple[subprocess.Popen, str]:
    if log is None:
        log = Path(tempfile.mkstemp(prefix="logprobe-ui-", suffix=".log")[1])
    with log.open("w") as out:
        proc = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env=None if env is None else dict(env), cwd=cwd
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.read() == b"ok":
                    return proc, url
        except OSError:
            time.sleep(0.3)
    proc.kill()
    proc.wait()
    raise RuntimeError(f"{' '.join(command[:4])} did not come up: {log.read_text()[-2000:]}")
