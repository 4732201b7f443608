"""logprobe: the logprob gap between an RL rollout engine and its trainer, recorded, judged, replayed.

One import package. An installed logprobe puts only ``logprobe`` into site-packages: the
repository's top-level folders become its subpackages (``app/`` is ``logprobe.app``,
``collectors/`` is ``logprobe.collectors``, ``storage/`` is ``logprobe.storage``, ``monitor/`` is
``logprobe.monitor``; see ``[tool.hatch.build.targets.wheel.sources]`` in pyproject.toml). In a
checkout the same names resolve to the same folders through this package's ``__path__``, so code,
tests and an installed wheel all use one set of module names and no module is ever loaded twice.

The trainer-side API is here at the top (``logprobe.init``, ``logprobe.rl_stats``,
``logprobe.tap_wandb``...), the engine and trainer integrations one level down (``logprobe.vllm``,
``logprobe.trl``, ``logprobe.verl``). Those names are loaded on first use: the collectors import
torch, and the store, the monitor, the CLI and the dashboard must not pay for it or need it.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_HERE = Path(__file__).resolve().parent
_SUBPACKAGES = ("app", "collectors", "storage", "monitor")
if not (_HERE / "collectors").is_dir() and (_HERE.parent / "collectors" / "__init__.py").is_file():
    # A checkout: the subpackages live beside this folder, not inside it (a wheel has them inside).
    __path__.append(str(_HERE.parent))

# The collectors' public API, loaded from logprobe.collectors on first use (PEP 562).
__all__ = [
    "HIST_EDGES",
    "MISMATCH_METRICS",
    "SIGNATURE_METRICS",
    "AlertFiredError",
    "MismatchResult",
    "Run",
    "__version__",
    "compute_mismatch",
    "init",
    "rl_stats",
    "tap_tensorboard",
    "tap_wandb",
    "token_entropy",
]
_LAZY = frozenset(__all__) - {"__version__"}

if TYPE_CHECKING:
    from logprobe.collectors import (
        HIST_EDGES,
        MISMATCH_METRICS,
        SIGNATURE_METRICS,
        AlertFiredError,
        MismatchResult,
        Run,
        compute_mismatch,
        init,
        rl_stats,
        tap_tensorboard,
        tap_wandb,
        token_entropy,
    )


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        # Not ours: `from logprobe import storage` falls back to importing the subpackage.
        raise AttributeError(f"module 'logprobe' has no attribute {name!r}")
    value = getattr(importlib.import_module("logprobe.collectors"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY, *_SUBPACKAGES})
