"""A vLLM ``StatLoggerBase`` that writes scheduler and iteration stats into a run.

For engines that accept ``stat_loggers`` (``AsyncLLM``, and ``LLMEngine`` from vLLM 0.11); the
plain ``vllm.LLM`` does not, so :meth:`EngineWatcher.log_engine_stats` reads ``get_metrics()``
instead. The stats classes are not a stable vLLM interface, so every field is read with a default.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from collectors._run import Run


def stat_logger(run: Run, step: Callable[[], int | None] | None = None, interval_s: float = 1.0) -> type:
    """A ``StatLoggerBase`` subclass bound to ``run``; pass it in ``stat_loggers=[...]``.

    ``step`` returns the trainer step to log under (for example ``lambda: watcher.step``); without
    it the engine's own iteration count is used. Deltas are summed and logged every ``interval_s``.
    """
    from vllm.v1.metrics.loggers import StatLoggerBase

    class LogprobeStatLogger(StatLoggerBase):
        def __init__(self, vllm_config: Any = None, engine_index: int = 0, *args: Any, **kwargs: Any) -> None:
            self.engine_index = engine_index
            self.iterations = 0
            self._sums: dict[str, float] = {}
            self._gauges: dict[str, float] = {}
            self._last_write = time.monotonic()

        def record(
            self, scheduler_stats: Any = None, iteration_stats: Any = None, *args: Any, **kwargs: Any
        ) -> None:
            self.iterations += 1
            if scheduler_stats is not None:
                prefix = getattr(scheduler_stats, "prefix_cache_stats", None)
                self._add("engine/prefix_cache_queries", getattr(prefix, "queries", 0))
                self._add("engine/prefix_cache_hits", getattr(prefix, "hits", 0))
                usage = getattr(scheduler_stats, "kv_cache_usage", None)
                if usage is None:
                    usage = getattr(scheduler_stats, "gpu_cache_usage", None)
                if usage is not None:
                    self._gauges["engine/kv_cache_usage"] = float(usage)
                self._gauges["engine/running"] = float(getattr(scheduler_stats, "num_running_reqs", 0))
                self._gauges["engine/waiting"] = float(getattr(scheduler_stats, "num_waiting_reqs", 0))
            if iteration_stats is not None:
                self._add("engine/preemptions", getattr(iteration_stats, "num_preempted_reqs", 0))
                self._add("engine/generation_tokens", getattr(iteration_stats, "num_generation_tokens", 0))
                self._add("engine/prompt_tokens", getattr(iteration_stats, "num_prompt_tokens", 0))
            if time.monotonic() - self._last_write >= interval_s:
                self.log()

        def _add(self, key: str, value: Any) -> None:
            self._sums[key] = self._sums.get(key, 0.0) + float(value or 0)

        def log(self) -> None:
            if not self._sums and not self._gauges:
                return
            stats = {**self._sums, **self._gauges}
            queries = self._sums.get("engine/prefix_cache_queries")
            if queries:
                stats["engine/prefix_cache_hit_rate"] = (
                    self._sums.get("engine/prefix_cache_hits", 0.0) / queries
                )
            at = step() if step is not None else None
            run.log(self.iterations if at is None else at, stats)
            self._sums, self._gauges = {}, {}
            self._last_write = time.monotonic()

        def log_engine_initialized(self) -> None:
            run.event("engine_start", engine_index=self.engine_index)

    return LogprobeStatLogger
