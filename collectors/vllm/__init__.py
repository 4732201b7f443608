"""The rollout side: what vLLM produced, with which settings, after which weight update.

Imports vLLM only where a function needs it, so ``collectors`` works without vLLM installed.

- :func:`record_engine`: the engine fingerprint (``engines`` row), asking the workers for ground
  truth when the worker extension is installed (``worker_extension_cls=WORKER_EXTENSION``).
- :func:`rollout_batch` / :func:`log_rollout`: ``RequestOutput``s to tensors for
  ``Run.log_mismatch``, and rollout metrics.
- :func:`watch`: weight updates, prefix-cache resets and engine counters of a live ``LLM``.
- :func:`stat_logger` / :func:`v0_stat_logger`: stat loggers for V1 and V0 engines (``stat_loggers``,
  ``add_logger``).
"""

from __future__ import annotations

import logging
from typing import Any

from logprobe.collectors._run import Run
from logprobe.collectors._values import fingerprint
from logprobe.collectors.vllm._config import engine_config, vllm_config_of, vllm_version
from logprobe.collectors.vllm._outputs import RolloutBatch, rollout_batch, sampled_logprobs
from logprobe.collectors.vllm._stats import stat_logger, v0_stat_logger
from logprobe.collectors.vllm._watch import EngineWatcher, watch
from logprobe.collectors.vllm._worker import (
    WORKER_EXTENSION,
    LogprobeWorkerExtension,
    probe_model,
    weights_checksum,
)

log = logging.getLogger(__name__)


def record_engine(
    run: Run,
    llm_or_engine: Any,
    *,
    worker: str | None = None,
    step: int | None = None,
    probe_workers: bool = True,
) -> dict[str, Any]:
    """Write this engine's fingerprint into ``run`` and return the row (``fingerprint`` included).

    With ``probe_workers``, the workers are asked (``collective_rpc("logprobe_probe")``, or directly
    for an in-process engine) what dtype the lm_head weight and the logits really are.
    """
    probe = _probe(llm_or_engine) if probe_workers else None
    row = engine_config(llm_or_engine, probe)
    target = run if worker is None else run.with_source(run.source, worker=worker)
    target.log_engine(row, step=step)
    return row


def log_rollout(
    run: Run,
    step: int,
    outputs: Any,
    *,
    policy_version: int | None = None,
    watcher: EngineWatcher | None = None,
    pad_id: int = 0,
) -> RolloutBatch:
    """Turn ``outputs`` into a :class:`RolloutBatch`, log its rollout metrics, and return it.

    With a ``watcher``, its step is moved to ``step`` (so weight-update events land on it) and the
    engine counters since the last rollout are logged too.
    """
    batch = rollout_batch(outputs, pad_id=pad_id)
    run.log(step, batch.metrics(), policy_version=policy_version)
    if watcher is not None:
        watcher.step = step
        watcher.log_engine_stats(step)
    return batch


def _probe(llm_or_engine: Any) -> list[dict[str, Any]] | None:
    rpc = getattr(llm_or_engine, "collective_rpc", None)
    if callable(rpc):
        try:
            return list(rpc("logprobe_probe"))
        except Exception as exc:  # extension not installed: fall back to the in-process model
            log.debug("logprobe: worker probe by rpc failed: %s", exc)
    executor = getattr(getattr(llm_or_engine, "llm_engine", None), "model_executor", None)
    worker = getattr(executor, "driver_worker", None)
    inner = getattr(worker, "worker", worker)
    runner = getattr(inner, "model_runner", None)
    get_model = getattr(runner, "get_model", None)
    if callable(get_model):
        try:
            return [probe_model(get_model(), inner)]
        except Exception as exc:
            log.debug("logprobe: in-process worker probe failed: %s", exc)
    return None


__all__ = [
    "WORKER_EXTENSION",
    "EngineWatcher",
    "LogprobeWorkerExtension",
    "RolloutBatch",
    "engine_config",
    "fingerprint",
    "log_rollout",
    "probe_model",
    "record_engine",
    "rollout_batch",
    "sampled_logprobs",
    "stat_logger",
    "v0_stat_logger",
    "vllm_config_of",
    "vllm_version",
    "watch",
    "weights_checksum",
]
