"""Importers against files written by the real libraries: tensorboardX and torch's TensorBoard
writer, an MLflow SQLite tracking store, and a Trackio project; values must come back exactly."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from logprobe.storage import Store
from logprobe.storage.importers import import_mlflow, import_tensorboard, import_trackio
from tests.conftest import LOGPROBE, logprobe_cli, run_python

STEPS = 25


def _values(seed: int) -> dict[str, list[float]]:
    rng = np.random.default_rng(seed)
    return {
        "train/loss": rng.normal(size=STEPS).tolist(),  # HF Trainer's prefix before TRL's name
        "train/sampling/sampling_logp_difference/mean": rng.uniform(0, 0.1, STEPS).tolist(),
        "custom/thing": (rng.lognormal(size=STEPS) * 1e-9).tolist(),  # tiny values survive too
    }


def _stored(root: Path, run_id: str) -> dict[tuple[int, str], float]:
    rows = Store(root).sql("SELECT step, name, value FROM metrics WHERE run_id = ?", [run_id]).to_pylist()
    return {(r["step"], r["name"]): r["value"] for r in rows}


def test_tensorboard_event_files_from_tensorboardx_and_torch(tmp_path: Path) -> None:
    from tensorboardX import SummaryWriter as XWriter
    from torch.utils.tensorboard import SummaryWriter as TorchWriter

    logdir = tmp_path / "tb"
    written = {"grpo-a": _values(0), "grpo-b": _values(1)}
    for run, writer_cls in (("grpo-a", XWriter), ("grpo-b", TorchWriter)):
        writer = writer_cls(str(logdir / run))
        for name, values in written[run].items():
            for step, value in enumerate(values):
                writer.add_scalar(name, value, step)
        writer.add_text("notes", "text is not a metric", 0)
        writer.close()
    root = tmp_path / "store"
    result = import_tensorboard(logdir, root)
    assert sorted(result.run_ids) == ["tb-grpo-a", "tb-grpo-b"]
    assert result.points == 2 * 3 * STEPS
    for run, values in written.items():
        stored = _stored(root, f"tb-{run}")
        assert len(stored) == 3 * STEPS
        for step in range(STEPS):
            # TensorBoard keeps float32: the import returns exactly that float32, widened.
            assert stored[(step, "train/loss")] == float(np.float32(values["train/loss"][step]))
            assert stored[(step, "mismatch/abs_logp_diff_mean")] == float(
                np.float32(values["train/sampling/sampling_logp_difference/mean"][step])
            )
            assert stored[(step, "custom/thing")] == float(np.float32(values["custom/thing"][step]))


def test_mlflow_sqlite_store_round_trips_exactly(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("verl-grpo", artifact_location=str(tmp_path / "artifacts"))
    run = client.create_run(experiment, run_name="qwen 7b/run#1")
    client.log_param(run.info.run_id, "lr", "1e-6")
    values = {
        "rollout_corr/k3_kl": np.random.default_rng(2).lognormal(-9, 1, STEPS).tolist(),
        "actor/pg_clipfrac": np.random.default_rng(3).uniform(0, 0.3, STEPS).tolist(),
        "my_metric": np.random.default_rng(4).normal(size=STEPS).tolist(),
    }
    for name, series in values.items():
        for step, value in enumerate(series):
            client.log_metric(run.info.run_id, name, value, step=step, timestamp=1_700_000_000_000 + step)
    client.set_terminated(run.info.run_id)

    root = tmp_path / "store"
    result = import_mlflow(uri, root)
    assert result.run_ids == [f"mlflow-{run.info.run_id}"] and result.points == 3 * STEPS
    stored = _stored(root, result.run_ids[0])
    for step in range(STEPS):
        assert stored[(step, "mismatch/k3")] == values["rollout_corr/k3_kl"][step]
        assert stored[(step, "train/clip_frac")] == values["actor/pg_clipfrac"][step]
        assert stored[(step, "my_metric")] == values["my_metric"][step]
    (row,) = Store(root).sql("SELECT name, project, config FROM runs").to_pylist()
    assert row["name"] == "qwen 7b/run#1" and row["project"] == "verl-grpo"
    assert json.loads(row["config"])["params"] == {"lr": "1e-6"}
    with pytest.raises(ValueError, match="no experiment named nope"):
        import_mlflow(uri, root, experiments=["nope"])


def test_trackio_project_round_trips_exactly(tmp_path: Path) -> None:
    values = _values(5)
    run_python(
        "import json, sys, trackio\n"
        "values = json.loads(sys.argv[1])\n"
        "trackio.init(project='rl-proj', name='run-1', config={'beta': 0.04})\n"
        f"for step in range({STEPS}):\n"
        "    trackio.log({k: v[step] for k, v in values.items()} | {'note': 'text'}, step=step)\n"
        "trackio.finish()\n",
        json.dumps(values),
        env={"TRACKIO_DIR": str(tmp_path / "trackio")},
        timeout=180,
    )
    db = tmp_path / "trackio" / "rl-proj.db"
    root = tmp_path / "store"
    result = import_trackio(db, root)
    assert result.run_ids == ["trackio-run-1"] and result.points == 3 * STEPS
    assert result.skipped == STEPS  # the text value of every step, counted
    stored = _stored(root, "trackio-run-1")
    for step in range(STEPS):
        assert stored[(step, "train/loss")] == values["train/loss"][step]
        assert stored[(step, "custom/thing")] == values["custom/thing"][step]
    (row,) = Store(root).sql("SELECT config FROM runs").to_pylist()
    assert json.loads(row["config"])["beta"] == 0.04


def test_import_cli_and_clear_errors(tmp_path: Path) -> None:
    from tensorboardX import SummaryWriter

    writer = SummaryWriter(str(tmp_path / "tb" / "only"))
    writer.add_scalar("reward", 0.5, 3)
    writer.close()
    root = tmp_path / "store"
    proc = logprobe_cli("import", "tensorboard", tmp_path / "tb", "--root", root, timeout=120)
    assert proc.stdout.split() == ["tb-only"] and "imported 1 run(s), 1 points" in proc.stderr
    assert _stored(root, "tb-only") == {(3, "reward/mean"): 0.5}
    (tmp_path / "empty").mkdir()
    bad = subprocess.run(
        [LOGPROBE, "import", "tensorboard", str(tmp_path / "empty"), "--root", str(root)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and "no TensorBoard event files" in bad.stderr
    not_trackio = tmp_path / "x.db"
    not_trackio.write_bytes(b"")
    with pytest.raises(ValueError, match="not a Trackio project database"):
        import_trackio(not_trackio, root)
