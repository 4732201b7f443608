"""The wheel a user installs: built from the project's files alone, installed into a fresh virtualenv
with the trainer extra, it puts `logprobe` and nothing else at the top of site-packages, and the
trainer-side API and the CLI work there with no checkout in sight."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow

SUBPACKAGES = {"app": "logprobe/app", "collectors": "logprobe/collectors", "storage": "logprobe/storage"}
SUBPACKAGES |= {"monitor": "logprobe/monitor", "logprobe": "logprobe"}

# Run inside the fresh virtualenv: one trainer step with a known gap of 0.25 nats on every token.
STEP = """
import sys, torch, logprobe
root = sys.argv[1]
with logprobe.init(run_id="wheel", root=root, project="wheel") as run:
    rollout = torch.log(torch.full((2, 5), 0.5))
    trainer = rollout + 0.25
    run.log_mismatch(0, trainer, rollout, token_ids=torch.zeros(2, 5, dtype=torch.long))
    run.log(0, logprobe.rl_stats(logprobs=trainer, old_logprobs=rollout, advantages=torch.ones(2)))
print(logprobe.__file__)
"""


def _sh(*cmd: str | Path, cwd: Path, timeout: float = 600, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env
    )
    assert proc.returncode == 0, f"{cmd} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def _project_files() -> list[str]:
    """What a clone has (tracked, plus new files not ignored), so the build sees what a user's would."""
    out = _sh("git", "ls-files", "--cached", "--others", "--exclude-standard", cwd=REPO)
    return [f for f in out.splitlines() if (REPO / f).is_file()]


def _modules_on_disk(files: list[str]) -> set[str]:
    """Every .py the four folders and logprobe/ hold, named as the wheel must name it."""
    names = set()
    for f in files:
        top, _, rest = f.partition("/")
        if top in SUBPACKAGES and f.endswith(".py"):
            names.add(f"{SUBPACKAGES[top]}/{rest}")
    return names


def test_wheel_installs_only_logprobe_and_runs_a_trainer_step(tmp_path: Path) -> None:
    # Build from a copy of the project's files: pip would write build/ and *.egg-info into the checkout.
    src, dist = tmp_path / "src", tmp_path / "dist"
    files = _project_files()
    for f in files:
        (src / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / f, src / f)
    _sh(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "-q",
        "--no-deps",
        "--no-build-isolation",
        "-w",
        dist,
        ".",
        cwd=src,
    )
    (wheel,) = dist.glob("logprobe-*.whl")

    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
    tops = {n.split("/", 1)[0] for n in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"logprobe"}, tops
    missing = _modules_on_disk(files) - set(names)
    assert not missing, f"modules the wheel lacks (pyproject.toml's packages list?): {sorted(missing)}"
    assert not [n for n in names if "tests/" in n or n.startswith(("bench/", "scripts/"))]

    # A fresh virtualenv, the wheel with the trainer extra, nothing of this checkout on any path.
    venv = tmp_path / "venv"
    try:
        _sh(sys.executable, "-m", "venv", venv, cwd=tmp_path)
        python, bin_dir = venv / "bin" / "python", venv / "bin"
        _sh(python, "-m", "pip", "install", "-q", f"{wheel}[torch]", cwd=tmp_path, timeout=900)
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
        env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
        work = tmp_path / "elsewhere"
        work.mkdir()

        site = Path(
            _sh(
                python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=work, env=env
            ).strip()
        )
        record = _sh(
            python,
            "-c",
            "import importlib.metadata as m; print('\\n'.join(str(f) for f in m.files('logprobe')))",
            cwd=work,
            env=env,
        )
        installed_tops = {line.split("/", 1)[0] for line in record.splitlines() if not line.startswith("..")}
        assert {t for t in installed_tops if not t.endswith(".dist-info")} == {"logprobe"}, installed_tops
        assert (site / "logprobe" / "collectors" / "_run.py").is_file()
        for bare in ("app", "collectors", "storage", "monitor"):
            assert not (site / bare).exists(), f"site-packages has a top-level {bare}"
            proc = subprocess.run(
                [python, "-c", f"import {bare}"], cwd=work, env=env, capture_output=True, text=True
            )
            assert proc.returncode != 0 and "ModuleNotFoundError" in proc.stderr, (bare, proc.stderr)

        # The trainer side: init, log_mismatch, rl_stats, from the installed package.
        root = tmp_path / "store"
        where = _sh(python, "-c", STEP, root, cwd=work, env=env).strip()
        assert Path(where).resolve().is_relative_to(site.resolve()), where

        # The read side: the installed command over what the step wrote, without torch loaded.
        out = _sh(
            bin_dir / "logprobe",
            "query",
            "--root",
            root,
            "--format",
            "json",
            "SELECT name, value FROM metrics WHERE name IN ('mismatch/abs_logp_diff_mean', 'train/ppo_kl')",
            cwd=work,
            env=env,
        )
        values = {row["name"]: row["value"] for row in json.loads(out)}
        assert values["mismatch/abs_logp_diff_mean"] == pytest.approx(0.25, rel=1e-6)
        assert "train/ppo_kl" in values
        no_torch = _sh(
            python,
            "-c",
            "import sys, logprobe.app.cli, logprobe.storage; print('torch' in sys.modules)",
            cwd=work,
            env=env,
        )
        assert no_torch.strip() == "False", "the CLI and the store must not import torch"

        # Without the dashboard extra, `logprobe ui` says what is missing and how to get it.
        proc = subprocess.run(
            [bin_dir / "logprobe", "ui", "--root", root],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert "streamlit and plotly" in proc.stderr and "logprobe[dashboard]" in proc.stderr, proc.stderr
    finally:
        shutil.rmtree(venv, ignore_errors=True)  # 1.6 GB with torch
