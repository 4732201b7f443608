"""W&B, for real (wandb 0.31 in offline mode, its own service process): the tap mirrors every
``wandb.log`` into logprobe as it happens, and ``logprobe import wandb`` reads the run folder W&B
wrote afterwards. Both must give back exactly what was logged, at W&B's steps, under logprobe's
names where a framework's quantity is logprobe's."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from logprobe.storage import Store
from tests.conftest import LOGPROBE, logprobe_cli, run_python

pytest.importorskip("wandb", reason="wandb is a test extra (requirements-bench.txt)")
STEPS = 12

# What a framework's training loop logs, the way it logs it: verl's names without a step (W&B counts),
# TRL's behind HF Trainer's prefix, a nested dict, a string and a commit=False half-step.
CHILD = """
import json, sys
import wandb
from logprobe import collectors
root, values = sys.argv[1], json.loads(sys.argv[2])
untap = collectors.tap_wandb(root=root)
run = wandb.init(project="rl", name="grpo-7b", config={"lr": 1e-6, "algo": "grpo"}, mode="offline")
for i in range(len(values["k3"])):
    first = {"rollout_corr/k3_kl": values["k3"][i], "train/loss": values["loss"][i], "note": "text"}
    run.log(first, commit=False)
    run.log({"custom": {"inner": values["inner"][i]}, "actor/pg_clipfrac": values["clip"][i]})
run.log({"late": 1.5}, step=100)
run.log({"old": 2.5}, step=50)  # behind W&B's step: W&B drops it, so does the tap
run.finish()
untap()
print(run.dir)
"""


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("wandb")
    rng = np.random.default_rng(7)
    values = {
        "k3": (rng.lognormal(size=STEPS) * 1e-4).tolist(),
        "loss": rng.normal(size=STEPS).tolist(),
        "inner": rng.uniform(size=STEPS).tolist(),
        "clip": rng.uniform(0, 0.3, STEPS).tolist(),
    }
    root = tmp / "tapped"
    env = {"WANDB_DIR": str(tmp), "WANDB_SILENT": "true", "WANDB_MODE": "offline"}
    proc = run_python(CHILD, str(root), json.dumps(values), env=env, timeout=180)
    return {"tmp": tmp, "root": root, "values": values, "run_dir": Path(proc.stdout.strip().splitlines()[-1])}


def _expected(values: dict) -> dict[tuple[int, str], float]:
    out = {}
    for i in range(STEPS):
        out[(i, "mismatch/k3")] = values["k3"][i]  # verl's rollout_corr/k3_kl is logprobe's k3
        out[(i, "train/loss")] = values["loss"][i]
        out[(i, "custom.inner")] = values["inner"][i]
        out[(i, "train/clip_frac")] = values["clip"][i]  # verl's actor/pg_clipfrac
    out[(100, "late")] = 1.5
    return out


def _stored(root: Path) -> tuple[str, dict[tuple[int, str], float]]:
    rows = Store(root).sql("SELECT run_id, step, name, value FROM metrics").to_pylist()
    [run_id] = {r["run_id"] for r in rows}
    return run_id, {(r["step"], r["name"]): r["value"] for r in rows}


def test_the_tap_mirrors_every_log_call_exactly(logged: dict) -> None:
    run_id, got = _stored(logged["root"])
    assert got == _expected(logged["values"])  # exact floats, W&B's steps, the old step dropped
    assert run_id.startswith("wandb-")
    [run] = Store(logged["root"]).sql("SELECT name, project, config, tags FROM runs").to_pylist()
    assert (run["name"], run["project"], run["tags"]) == ("grpo-7b", "rl", ["wandb"])
    assert json.loads(run["config"]) == {"lr": 1e-6, "algo": "grpo"}


def test_import_reads_the_run_folder_wandb_wrote(logged: dict, tmp_path: Path) -> None:
    root = tmp_path / "imported"
    proc = logprobe_cli("import", "wandb", logged["tmp"] / "wandb", "--root", root, timeout=120)
    assert "skipped" in proc.stderr  # the strings, counted
    run_id, got = _stored(root)
    assert got == _expected(logged["values"])
    tapped_id, _ = _stored(logged["root"])
    assert run_id == f"wandb-rl-{tapped_id.removeprefix('wandb-')}"
    [run] = Store(root).sql("SELECT name, project, config, source FROM runs").to_pylist()
    assert (run["name"], run["project"], run["source"]) == ("grpo-7b", "rl", "wandb")
    assert json.loads(run["config"]) == {"lr": 1e-6, "algo": "grpo"}
    # One folder, the file itself, or the folder's parent: the same run.
    for target in (logged["run_dir"].parent, next(logged["run_dir"].parent.glob("*.wandb"))):
        again = tmp_path / f"again-{target.name}"
        subprocess.run(
            [LOGPROBE, "import", "wandb", str(target), "--root", str(again)], check=True, timeout=120
        )
        assert _stored(again)[1] == got


def test_a_file_that_is_not_a_wandb_log_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "run-x.wandb"
    bad.write_bytes(b"not a log")
    proc = subprocess.run(
        [LOGPROBE, "import", "wandb", str(bad), "--root", str(tmp_path / "r")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0 and "not a W&B run file" in proc.stderr
