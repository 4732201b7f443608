"""Importers for runs logged before logprobe existed: TensorBoard event files, MLflow tracking
stores, Trackio projects and W&B run folders, each run into a logprobe run.

Every importer reads through the tool's own reader (``EventAccumulator``, ``MlflowClient``,
Trackio's SQLite tables, W&B's ``Record`` protobuf), keeps values exactly (TensorBoard's float32
scalars widen to float64 without change), maps metric names where logprobe has the same quantity
(``storage.map_name``: the frameworks' names, also behind HF Trainer's ``train/`` prefix) and keeps
the others as they were. Each imported run gets an ``imported`` event naming the source and the
names it mapped.
"""

from logprobe.storage.importers._common import ImportResult, safe_run_id
from logprobe.storage.importers._mlflow import import_mlflow
from logprobe.storage.importers._tensorboard import import_tensorboard
from logprobe.storage.importers._trackio import import_trackio
from logprobe.storage.importers._wandb import import_wandb

__all__ = [
    "ImportResult",
    "import_mlflow",
    "import_tensorboard",
    "import_trackio",
    "import_wandb",
    "safe_run_id",
]
