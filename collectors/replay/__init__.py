"""Replay: re-score a run's logged sequences with the engine's settings changed one at a time.

``replay(root, run)`` reads the run's sequences, checkpoints and recorded engine settings, drives a
vLLM engine in a worker process (``worker.py``, any interpreter with vLLM) and stores every variant
as a run of source ``replay``. ``python -m collectors.replay`` is the command behind ``logprobe
replay``.
"""

from logprobe.collectors.replay._client import EngineWorker, WorkerError, engine_python
from logprobe.collectors.replay._plan import (
    CANDIDATES,
    Plan,
    ReplayError,
    Settings,
    candidate_changes,
    plan_replay,
)
from logprobe.collectors.replay._replay import Report, Variant, Verdict, replay

__all__ = [
    "CANDIDATES",
    "EngineWorker",
    "Plan",
    "ReplayError",
    "Report",
    "Settings",
    "Variant",
    "Verdict",
    "WorkerError",
    "candidate_changes",
    "engine_python",
    "plan_replay",
    "replay",
]
