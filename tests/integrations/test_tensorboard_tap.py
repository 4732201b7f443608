"""TensorBoard, for real: `logprobe.tap_tensorboard()` mirrors what torch's and tensorboardX's
`SummaryWriter`s log into logprobe as it happens. The values come back exact, at TensorBoard's
steps and under logprobe's names where the framework's quantity is logprobe's; TensorBoard's own
files hold the same points; and importing those files afterwards lands on the same run id."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from logprobe.storage import Store
from logprobe.storage.importers import import_tensorboard
from tests.conftest import run_python

pytest.importorskip("tensorboard", reason="tensorboard is a test extra (requirements-bench.txt)")
pytest.importorskip("tensorboardX", reason="tensorboardX is a test extra (requirements-test.txt)")
STEPS = 10

# An OpenRLHF-shaped loop on torch's writer (its names, a 0-d tensor, add_scalars, steps out of
# order, one call without a step), a tensorboardX writer beside it, and a run the tap cannot write
# to: the user's add_scalar must still work and TensorBoard must still get it.
CHILD = """
import json, sys
import torch
import tensorboardX
from torch.utils.tensorboard import SummaryWriter
import logprobe
root, logdir, values = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
original = SummaryWriter.add_scalar
untap = logprobe.tap_tensorboard(root=root, framework="openrlhf")
writer = SummaryWriter(log_dir=f"{logdir}/openrlhf-run")
for step in reversed(range(len(values["kl"]))):
    writer.add_scalar("train/vllm_kl", values["kl"][step], step)
    writer.add_scalar("train/policy_loss", torch.tensor(values["loss"][step]), step)
    writer.add_scalars("reward", {"mean": values["reward"][step], "max": 1.0}, step)
writer.add_scalar("eval/score", 0.5)  # no step: TensorBoard records 0
writer.close()
other = tensorboardX.SummaryWriter(logdir=f"{logdir}/tbx-run")
other.add_scalar("train/ppo_clip_ratio", 0.125, 3)
other.close()
untap()
assert SummaryWriter.add_scalar is original, "untap must restore the class"

closed = logprobe.init(run_id="closed", root=root)
closed.close()
untap = logprobe.tap_tensorboard(closed)
late = SummaryWriter(log_dir=f"{logdir}/after-close")
late.add_scalar("loss", 2.0, 1)  # the mirror fails; the user's call must not
late.close()
untap()
print("ok")
"""


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("tbtap")
    rng = np.random.default_rng(3)
    values = {
        "kl": (rng.lognormal(size=STEPS) * 1e-3).tolist(),
        "loss": rng.normal(size=STEPS).astype(np.float32).tolist(),  # a float32 tensor in the loop
        "reward": rng.uniform(size=STEPS).tolist(),
    }
    root, logdir = tmp / "store", tmp / "tb"
    proc = run_python(CHILD, str(root), str(logdir), json.dumps(values), timeout=180)
    assert proc.stdout.strip().endswith("ok"), proc.stdout + proc.stderr
    return {"tmp": tmp, "root": root, "logdir": logdir, "values": values}


def _points(root: Path, run_id: str) -> dict[tuple[int, str], float]:
    with Store(root) as store:
        rows = store.sql(
            "SELECT step, name, value FROM metrics WHERE run_id = ?", params=[run_id]
        ).to_pylist()
    return {(r["step"], r["name"]): r["value"] for r in rows}


def test_values_exact_at_tensorboards_steps_under_logprobes_names(logged: dict) -> None:
    values = logged["values"]
    expected = {(0, "eval/score"): 0.5}
    for step in range(STEPS):
        expected[(step, "mismatch/k1")] = values["kl"][step]  # OpenRLHF's train/vllm_kl is logprobe's k1
        expected[(step, "train/policy_loss")] = values["loss"][step]
        expected[(step, "reward/mean")] = values["reward"][step]
        expected[(step, "reward/max")] = 1.0
    assert _points(logged["root"], "tb-openrlhf-run") == expected
    assert _points(logged["root"], "tb-tbx-run") == {(3, "train/clip_frac"): 0.125}
    with Store(logged["root"]) as store:
        run = store.sql("SELECT * FROM runs WHERE run_id = 'tb-openrlhf-run'").to_pylist()
        assert len(run) == 1 and json.loads(run[0]["config"])["logdir"].endswith("openrlhf-run")


def test_tensorboard_files_hold_the_same_points_and_import_to_the_same_run(logged: dict) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    values = logged["values"]
    acc = EventAccumulator(str(logged["logdir"] / "openrlhf-run"), size_guidance={"scalars": 0})
    acc.Reload()
    kl = {e.step: e.value for e in acc.Scalars("train/vllm_kl")}
    assert kl == {s: pytest.approx(values["kl"][s], rel=1e-6) for s in range(STEPS)}  # TensorBoard: float32

    again = logged["tmp"] / "imported"
    import_tensorboard(logged["logdir"] / "openrlhf-run", again)
    tapped = _points(logged["root"], "tb-openrlhf-run")
    imported = _points(again, "tb-openrlhf-run")
    assert imported, "the import wrote no run under the tap's run id"
    shared = {k for k in imported if k[1] == "mismatch/k1"}
    assert shared and all(imported[k] == pytest.approx(tapped[k], rel=1e-6) for k in shared)


def test_a_failing_mirror_never_reaches_the_loop(logged: dict) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logged["logdir"] / "after-close"), size_guidance={"scalars": 0})
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("loss")] == [(1, 2.0)]
    assert _points(logged["root"], "closed") == {}


def test_unknown_framework_is_one_clear_error(tmp_path: Path) -> None:
    import logprobe

    with pytest.raises(ValueError, match="unknown framework 'nope'"):
        logprobe.tap_tensorboard(root=tmp_path, framework="nope")
