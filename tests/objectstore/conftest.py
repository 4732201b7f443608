"""A real S3 API on 127.0.0.1: moto's server mode, in its own process, started once per session.

Each test gets its own bucket and its own local-copy directory, and the standard AWS environment
variables pointing at the server, so logprobe's code reads its endpoint and credentials exactly as it
would on AWS.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench._servers import free_port
from tests.app.test_dashboard import browser  # noqa: F401  (the browser tests' Chromium, a fixture)

boto3 = pytest.importorskip("boto3", reason="the S3 tests need the test extras (moto[server], boto3)")


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "server.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while True:
        try:
            with urllib.request.urlopen(f"{url}/moto-api/", timeout=2):
                break
        except OSError:
            if time.time() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail(f"moto server did not start: {log.read_text()[-2000:]}")
            time.sleep(0.2)
    yield url
    proc.terminate()
    proc.wait(10)


AWS_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1"}


@pytest.fixture
def s3_env(s3_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The environment a process needs to reach the test server (also handed to child processes)."""
    env = {**AWS_ENV, "AWS_ENDPOINT_URL": s3_endpoint, "LOGPROBE_CACHE_DIR": str(tmp_path / "cache")}
    for key in ("AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


@pytest.fixture
def s3(s3_env: dict[str, str]) -> object:
    """A boto3 client on the test server: for looking at the raw objects, never for logprobe's I/O."""
    return boto3.client("s3", endpoint_url=s3_env["AWS_ENDPOINT_URL"])


@pytest.fixture
def bucket(s3: object) -> str:
    name = f"logprobe-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    return name


@pytest.fixture
def s3_root(bucket: str) -> str:
    return f"s3://{bucket}/team/store"


def child_env(s3_env: dict[str, str]) -> dict[str, str]:
    return {**os.environ, **s3_env}
