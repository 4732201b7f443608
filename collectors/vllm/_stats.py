"""vLLM stat loggers that write scheduler and iteration stats into a run.

Two engine generations, two interfaces: V1 (``AsyncLLM``, and ``LLMEngine`` from vLLM 0.11) takes
stat-logger *classes* in ``stat_loggers=[...]`` and calls ``record(scheduler_stats,
iteration_stats)``; V0 (vLLM up to 0.10, e.g. 0.8.5) takes *instances*, in ``stat_loggers={name:
...}`` or ``llm.llm_engine.add_logger(name, ...)``, and calls ``log(stats)``. Both feed one
accumulator, so the metric names and the logging cadence are the same. The plain V1 ``vllm.LLM``
takes neither; :meth:`EngineWatcher.log_engine_stats` reads ``get_metrics()`` there. The stats
classes are not a stable vLLM interface, so every field is read with a default.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from logprobe.collectors._run import Run


class _Accumulator:
    """Deltas summed and gauges kept until the next write, every ``interval_s``."""

    def __init__(self, run: Run, step: Callable[[], int | None] | None, interval_s: float) -> None:
        self.run, self.step, self.interval_s = run, step, interval_s
        self.iterations = 0
        self.sums: dict[str, float] = {}
        self.gauges: dict[str, float] = {}
        self.last_write = time.monotonic()

    def add(self, key: str, value: Any) -> None:
        self.sums[key] = self.sums.get(key, 0.0) + float(value or 0)

    def gauge(self, key: str, value: Any) -> None:
        if value is not None:
            self.gauges[key] = float(value)

    def tick(self) -> None:
        self.iterations += 1
        if time.monotonic() - self.last_write >= self.interval_s:
            self.write()

    def write(self) -> None:
        if not self.sums and not self.gauges:
            return
        stats = {**self.sums, **self.gauges}
        queries = self.sums.get("engine/prefix_cache_queries")
        if queries:
            stats["engine/prefix_cache_hit_rate"] = self.sums.get("engine/prefix_cache_hits", 0.0) / queries
        at = self.step() if self.step is not None else None
        self.run.log(self.iterations if at is None else at, stats)
        self.sums, self.gauges = {}, {}
        self.last_write = time.monotonic()


def stat_logger(run: Run, step: Callable[[], int | None] | None = None, interval_s: float = 1.0) -> type:
    """A V1 ``StatLoggerBase`` subclass bound to ``run``; pass it in ``stat_loggers=[...]``.

    ``step`` returns the trainer step to log under (for example ``lambda: watcher.step``); without
    it the engine's own iteration count is used. Deltas are summed and logged every ``interval_s``.
    """
    from vllm.v1.metrics.loggers import StatLoggerBase

    class LogprobeStatLogger(StatLoggerBase):
        def __init__(self, vllm_config: Any = None, engine_index: int = 0, *args: Any, **kwargs: Any) -> None:
            self.engine_index = engine_index
            self._acc = _Accumulator(run, step, interval_s)

        def record(
            self, scheduler_stats: Any = None, iteration_stats: Any = None, *args: Any, **kwargs: Any
        ) -> None:
            acc = self._acc
            if scheduler_stats is not None:
                prefix = getattr(scheduler_stats, "prefix_cache_stats", None)
                acc.add("engine/prefix_cache_queries", getattr(prefix, "queries", 0))
                acc.add("engine/prefix_cache_hits", getattr(prefix, "hits", 0))
                usage = getattr(scheduler_stats, "kv_cache_usage", None)
                acc.gauge(
                    "engine/kv_cache_usage",
                    usage if usage is not None else getattr(scheduler_stats, "gpu_cache_usage", None),
                )
                acc.gauge("engine/running", getattr(scheduler_stats, "num_running_reqs", 0))
                acc.gauge("engine/waiting", getattr(scheduler_stats, "num_waiting_reqs", 0))
            if iteration_stats is not None:
                acc.add("engine/preemptions", getattr(iteration_stats, "num_preempted_reqs", 0))
                acc.add("engine/generation_tokens", getattr(iteration_stats, "num_generation_tokens", 0))
                acc.add("engine/prompt_tokens", getattr(iteration_stats, "num_prompt_tokens", 0))
            acc.tick()

        def log(self) -> None:
            self._acc.write()

        def log_engine_initialized(self) -> None:
            run.event("engine_start", engine_index=self.engine_index)

    return LogprobeStatLogger


def v0_stat_logger(run: Run, step: Callable[[], int | None] | None = None, interval_s: float = 1.0) -> Any:
    """A V0 ``StatLoggerBase`` *instance* bound to ``run``, for ``llm.llm_engine.add_logger("logprobe",
    ...)`` or ``stat_loggers={"logprobe": ...}`` on vLLM up to 0.10.

    V0 reports a prefix-cache hit *rate* per iteration, not queries and hits, so that is what is
    logged (the mean over the interval)."""
    from vllm.engine.metrics_types import StatLoggerBase

    class LogprobeV0StatLogger(StatLoggerBase):
        def __init__(self) -> None:
            super().__init__(local_interval=interval_s, vllm_config=None)
            self._acc = _Accumulator(run, step, interval_s)
            self._hit_rates: list[float] = []

        def log(self, stats: Any) -> None:
            acc = self._acc
            acc.add("engine/prompt_tokens", getattr(stats, "num_prompt_tokens_iter", 0))
            acc.add("engine/generation_tokens", getattr(stats, "num_generation_tokens_iter", 0))
            acc.add("engine/preemptions", getattr(stats, "num_preemption_iter", 0))
            acc.gauge("engine/kv_cache_usage", getattr(stats, "gpu_cache_usage_sys", None))
            acc.gauge("engine/running", getattr(stats, "num_running_sys", 0))
            acc.gauge("engine/waiting", getattr(stats, "num_waiting_sys", 0))
            rate = getattr(stats, "gpu_prefix_cache_hit_rate", None)
            if isinstance(rate, int | float) and rate >= 0:  # -1 while prefix caching is off
                self._hit_rates.append(float(rate))
                acc.gauge("engine/prefix_cache_hit_rate", sum(self._hit_rates) / len(self._hit_rates))
            acc.tick()
            if not acc.gauges:
                self._hit_rates = []

        def info(self, type: str, obj: Any) -> None:  # the argument names are vLLM's
            pass

    return LogprobeV0StatLogger()
