"""Watching a live engine: weight updates, prefix-cache resets, generation, engine counters.

vLLM has no callback for "the weights changed"; every framework calls one of a few methods
(``collective_rpc("reload_weights" | "update_weights" | ...)``, a worker's ``reload_weights``,
``reset_prefix_cache``). :class:`EngineWatcher` wraps those methods on one engine instance (never
the class, never globally) and turns them into ``events`` rows.

A weight update's event is written once its prefix-cache outcome is known: when
``reset_prefix_cache`` follows (``prefix_cache_reset: true``), or when generation starts first
(``false``). In the second case with prefix caching on, a ``stale_prefix_cache`` event says that
prompts sharing a cached prefix may be served KV computed with the old weights: one of the
V0-to-V1 failure modes.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

from logprobe.collectors._run import Run
from logprobe.collectors.vllm._config import vllm_config_of

log = logging.getLogger(__name__)

WEIGHT_METHODS = frozenset(
    {
        "reload_weights",
        "update_weights",
        "load_weights",
        "update_named_param",
        "update_weights_from_ipc",
        "update_weight",
        "update_weights_from_tensor",
    }
)
_COUNTERS = {
    "vllm:prefix_cache_queries": "engine/prefix_cache_queries",
    "vllm:prefix_cache_hits": "engine/prefix_cache_hits",
    "vllm:num_preemptions": "engine/preemptions",
    "vllm:prompt_tokens": "engine/prompt_tokens",
    "vllm:generation_tokens": "engine/generation_tokens",
}
_GAUGES = {"vllm:kv_cache_usage_perc": "engine/kv_cache_usage", "vllm:num_requests_running": "engine/running"}


class EngineWatcher:
    """Records weight updates, cache resets and engine counters of one ``vllm.LLM``."""

    def __init__(self, run: Run, llm: Any) -> None:
        self.run = run
        self.llm = llm
        self.step: int | None = None  # the trainer step the next rollouts belong to
        self.weight_version: Any = None
        config = vllm_config_of(llm)
        self.prefix_caching = bool(
            getattr(getattr(config, "cache_config", None), "enable_prefix_caching", False)
        )
        self._lock = threading.Lock()
        self._local = threading.local()  # marks a collective_rpc already being recorded
        self._generating = 0
        self._pending: dict[str, Any] | None = None
        self._counters: dict[str, float] = {}
        self._originals: list[tuple[Any, str, Any]] = []
        self._wrap(llm, "generate", self._around_generate)
        self._wrap(llm, "chat", self._around_generate)
        self._wrap(llm, "collective_rpc", self._around_rpc)
        self._wrap(llm, "reset_prefix_cache", self._around_reset)
        worker = _driver_worker(llm)
        if worker is not None:  # in-process engines: direct calls on the worker are seen too
            for method in WEIGHT_METHODS:
                if callable(getattr(worker, method, None)):
                    self._wrap(worker, method, functools.partial(self._around_direct_update, method))
            # TRL's colocate mode calls the model's load_weights directly (works on GPU; on CPU the
            # prepacked linear layers have no weight_loader, so vLLM itself refuses it).
            model = _worker_model(worker)
            if model is not None and callable(getattr(model, "load_weights", None)):
                self._wrap(
                    model, "load_weights", functools.partial(self._around_direct_update, "load_weights")
                )

    # ---------------------------------------------------------------- public

    @contextlib.contextmanager
    def weight_update(
        self, version: Any = None, *, method: str = "manual", tensors: int | None = None
    ) -> Iterator[None]:
        """Wrap weight loading the watcher cannot see (for example ``model.load_weights``)."""
        started = time.time()
        in_flight = self._generating > 0
        yield
        self._record_update(method, version, started, time.time() - started, in_flight, tensors)

    def log_engine_stats(self, step: int | None = None) -> dict[str, float]:
        """Log engine counters since the last call, from ``llm.get_metrics()`` (needs
        ``disable_log_stats=False``): prefix-cache queries/hits/hit rate, preemptions, KV usage.

        ``get_metrics()`` reads vLLM's process-wide Prometheus registry: with several engines in
        one process the counters follow the one started last.
        """
        try:
            metrics = self.llm.get_metrics()
        except Exception as exc:  # stats off, or an engine without get_metrics
            log.debug("logprobe: no engine metrics: %s", exc)
            return {}
        out: dict[str, float] = {}
        for metric in metrics:
            name = getattr(metric, "name", None)
            value = getattr(metric, "value", None)
            if not isinstance(value, int | float):
                continue
            if name in _COUNTERS:
                key = _COUNTERS[name]
                total = out.get(key + "/total", 0.0) + float(value)  # summed over label sets
                out[key + "/total"] = total
            elif name in _GAUGES:
                out[_GAUGES[name]] = float(value)
        stats: dict[str, float] = {k: v for k, v in out.items() if not k.endswith("/total")}
        for key in _COUNTERS.values():
            total = out.get(key + "/total")
            if total is None:
                continue
            stats[key] = total - self._counters.get(key, 0.0)
            self._counters[key] = total
        queries = stats.get("engine/prefix_cache_queries")
        if queries:
            stats["engine/prefix_cache_hit_rate"] = stats.get("engine/prefix_cache_hits", 0.0) / queries
        at = step if step is not None else self.step
        if stats and at is not None:
            self.run.log(at, stats)
        return stats

    def close(self) -> None:
        """Write a still-pending update (its cache outcome unknown) and unwrap the engine."""
        with self._lock:
            pending, self._pending = self._pending, None
        if pending is not None:
            self._emit(pending, reset=None, resolved_by="close")
        for owner, name, original in reversed(self._originals):
            if original is None:
                with contextlib.suppress(AttributeError):
                    delattr(owner, name)
            else:
                setattr(owner, name, original)
        self._originals.clear()

    # ---------------------------------------------------------------- wrappers

    def _wrap(self, owner: Any, name: str, around: Any) -> None:
        original = getattr(owner, name, None)
        if not callable(original):
            return
        self._originals.append(
            (owner, name, owner.__dict__.get(name) if hasattr(owner, "__dict__") else None)
        )

        @functools.wraps(original)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return around(original, *args, **kwargs)

        setattr(owner, name, wrapper)

    def _around_generate(self, original: Any, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            pending, self._pending = self._pending, None
            self._generating += 1
        if pending is not None:
            self._emit(pending, reset=False, resolved_by="generate")
        try:
            return original(*args, **kwargs)
        finally:
            with self._lock:
                self._generating -= 1

    def _around_rpc(self, original: Any, method: Any, *args: Any, **kwargs: Any) -> Any:
        if not (isinstance(method, str) and method in WEIGHT_METHODS):
            return original(method, *args, **kwargs)
        started = time.time()
        in_flight = self._generating > 0
        self._local.inside = True
        try:
            result = original(method, *args, **kwargs)
        finally:
            self._local.inside = False
        rpc_kwargs = kwargs.get("kwargs") or {}
        self._record_update(
            method, self.weight_version, started, time.time() - started, in_flight, _count_tensors(rpc_kwargs)
        )
        return result

    def _around_direct_update(self, method: str, original: Any, *args: Any, **kwargs: Any) -> Any:
        if getattr(self._local, "inside", False):
            return original(*args, **kwargs)  # already counted by an outer call
        started = time.time()
        in_flight = self._generating > 0
        self._local.inside = True  # reload_weights calls load_weights: one update, one event
        try:
            result = original(*args, **kwargs)
        finally:
            self._local.inside = False
        weights = kwargs.get("weights", args[0] if args else None)
        tensors = len(weights) if isinstance(weights, list | tuple) else _count_tensors(kwargs)
        self._record_update(method, self.weight_version, started, time.time() - started, in_flight, tensors)
        return result

    def _around_reset(self, original: Any, *args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        with self._lock:
            pending, self._pending = self._pending, None
        if pending is not None:
            pending["reset_after_s"] = round(time.time() - pending["ended_at"], 6)
            self._emit(
                pending, reset=bool(result) if result is not None else True, resolved_by="reset_prefix_cache"
            )
        self.run.event("prefix_cache_reset", step=self.step, ok=result)
        return result

    # ---------------------------------------------------------------- events

    def _record_update(
        self, method: str, version: Any, started: float, duration: float, in_flight: bool, tensors: int | None
    ) -> None:
        update = {
            "method": method,
            "weight_version": version,
            "started_at": started,
            "ended_at": started + duration,
            "duration_s": round(duration, 6),
            "tensors": tensors,
            "generation_in_flight": in_flight,
            "paused_generation": not in_flight,
            "prefix_caching": self.prefix_caching,
            "checksum": self._checksum(),
        }
        with self._lock:
            previous, self._pending = self._pending, update
        if previous is not None:
            self._emit(previous, reset=False, resolved_by="next_update")

    def _emit(self, update: dict[str, Any], *, reset: bool | None, resolved_by: str) -> None:
        update = {**update, "prefix_cache_reset": reset, "resolved_by": resolved_by}
        if update["weight_version"] is None:  # vLLM >= 0.27 keeps its own (set after the update)
            update["weight_version"] = self._engine_weight_version()
        self.run.event("weight_update", step=self.step, **update)
        if reset is False and resolved_by == "generate" and update["prefix_caching"]:
            self.run.event(
                "stale_prefix_cache",
                step=self.step,
                weight_version=update["weight_version"],
                message="no prefix-cache reset after a weight update: prompts sharing a cached prefix "
                "reuse KV computed with the old weights",
            )
            log.warning("logprobe: weight update without a prefix-cache reset while prefix caching is on")

    def _engine_weight_version(self) -> str | None:
        getter = getattr(self.llm, "get_weight_version", None)
        try:
            return None if getter is None else getter()
        except Exception:  # older engines, or no weight-transfer support
            return None

    def _checksum(self) -> str | None:
        try:
            sums = self._original("collective_rpc")("logprobe_checksum")
        except Exception:  # no worker extension installed: the checksum is optional
            worker = _driver_worker(self.llm)
            model = _worker_model(worker)
            if model is None:
                return None
            from logprobe.collectors.vllm._worker import weights_checksum

            return weights_checksum(model)
        return sums[0] if sums and len(set(sums)) == 1 else ",".join(map(str, sums))

    def _original(self, name: str) -> Any:
        attr = getattr(self.llm, name)
        return getattr(attr, "__wrapped__", attr)


def watch(run: Run, llm: Any) -> EngineWatcher:
    """Start recording weight updates, prefix-cache resets and engine counters of ``llm``."""
    return EngineWatcher(run, llm)


def _driver_worker(llm: Any) -> Any:
    executor = getattr(getattr(llm, "llm_engine", None), "model_executor", None)
    return getattr(executor, "driver_worker", None)


def _worker_model(worker: Any) -> Any:
    inner = getattr(worker, "worker", worker)
    runner = getattr(inner, "model_runner", None)
    get_model = getattr(runner, "get_model", None)
    return get_model() if callable(get_model) else None


def _count_tensors(kwargs: dict[str, Any]) -> int | None:
    for key in ("weights_iterator", "weights", "named_tensors"):
        value = kwargs.get(key)
        if isinstance(value, list | tuple | dict):
            return len(value)
    return None
