"""An MLflow tracking store (SQLite, file store or server URI) into logprobe runs."""

from __future__ import annotations

import os

from logprobe.storage._writer import Writer
from logprobe.storage.importers._common import ImportResult, safe_run_id, write_run


def import_mlflow(
    tracking_uri: str,
    root: str | os.PathLike[str] | None = None,
    *,
    experiments: list[str] | None = None,
    prefix: str = "mlflow",
) -> ImportResult:
    """Every run of every experiment (or of the named ones) becomes ``<prefix>-<mlflow run id>``;
    its params and tags become the config, each metric's full history its points."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    found = client.search_experiments()
    chosen = [e for e in found if experiments is None or e.name in experiments]
    if experiments is not None and len(chosen) != len(set(experiments)):
        missing = sorted(set(experiments) - {e.name for e in chosen})
        raise ValueError(f"{tracking_uri}: no experiment named {', '.join(missing)}")
    result = ImportResult()
    with Writer(root) as writer:
        for experiment in chosen:
            for run in client.search_runs([experiment.experiment_id], max_results=50_000):
                points = []
                for key in run.data.metrics:
                    for m in client.get_metric_history(run.info.run_id, key):
                        points.append((m.step, m.timestamp / 1000.0, key, float(m.value)))
                write_run(
                    writer,
                    safe_run_id(prefix, run.info.run_id),
                    source="mlflow",
                    name=run.info.run_name or run.info.run_id,
                    project=experiment.name,
                    config={"params": dict(run.data.params), "tags": dict(run.data.tags)},
                    created_at=run.info.start_time / 1000.0 if run.info.start_time else None,
                    points=points,
                    result=result,
                )
    return result
