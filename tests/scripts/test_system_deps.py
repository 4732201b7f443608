"""``scripts/system_deps.sh``: what ``make test`` needs from the machine, installed as root, else named.

The root path (apt-get) is what every CI run takes; here the other one runs for real as an
unprivileged user on a PATH without Chromium or Java.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "system_deps.sh"


def test_without_root_it_names_the_packages_and_the_command() -> None:
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        pytest.skip("needs root and util-linux's setpriv to run the script as another user")
    # Under /tmp itself: pytest's tmp_path sits in a root-only folder the other user cannot enter.
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        Path(tmp).chmod(0o755)
        bin_dir = Path(tmp) / "bin"
        bin_dir.mkdir()
        for tool in ("sh", "id"):  # nothing else: no chromium, no java on this PATH
            (bin_dir / tool).symlink_to(shutil.which(tool))
        # A copy: the checkout itself may sit in a folder the other user cannot enter (mktemp -d).
        script = Path(tmp) / "system_deps.sh"
        shutil.copyfile(SCRIPT, script)
        proc = _as_nobody(setpriv, bin_dir, script)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip() == (
        "make test needs Debian packages: chromium default-jre-headless. "
        "Run as root: apt-get install -y chromium default-jre-headless"
    )


def _as_nobody(setpriv: str, bin_dir: Path, script: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", str(bin_dir / "sh"), str(script)],
        env={"PATH": str(bin_dir)},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_with_everything_present_it_does_nothing(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("sh", "id"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    for tool in ("chromium", "java"):  # present as far as `command -v` can tell
        (bin_dir / tool).write_text("#!/bin/sh\nexit 0\n")
        (bin_dir / tool).chmod(0o755)
    proc = subprocess.run(
        [str(bin_dir / "sh"), str(SCRIPT)],
        env={"PATH": str(bin_dir)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0 and proc.stdout == "" and proc.stderr == ""
