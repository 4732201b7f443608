"""Code that runs inside the trainer and beside vLLM (its workers and rollout processes) and logs to
the store.

torch is imported here because every collector works on tensors; vLLM is imported lazily by the
modules that need it, and the dashboard never imports this package.
"""

from logprobe import __version__
from logprobe.collectors._mismatch import HIST_EDGES, MISMATCH_METRICS, MismatchResult, compute_mismatch
from logprobe.collectors._rl_stats import rl_stats, token_entropy
from logprobe.collectors._run import AlertFiredError, Run, init
from logprobe.collectors._signatures import SIGNATURE_METRICS
from logprobe.collectors._tap import tap_tensorboard, tap_wandb

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
