"""The local servers a benchmark starts for itself (``logprobe ui`` for the monitor's Runs page,
moto's S3 server for the object store): a free port to start one on, and a sure way to stop it, so
that a failed measurement never leaves a server holding the port or the machine's cores."""

from __future__ import annotations

import socket
import subprocess


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
