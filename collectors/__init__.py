"""Code that runs inside the trainer and beside vLLM (its workers and rollout processes) and logs to
the store.

torch is imported here because every collector works on tensors; vLLM is imported lazily by the
modules that need it, and the dashboard never imports this package.
"""

from logprobe.collectors._mismatch import HIST_EDGES as HIST_EDGES
from logprobe.collectors._mismatch import MISMATCH_METRICS as MISMATCH_METRICS
from logprobe.collectors._mismatch import MismatchResult as MismatchResult
from logprobe.collectors._mismatch import compute_mismatch as compute_mismatch
from logprobe.collectors._rl_stats import rl_stats as rl_stats
from logprobe.collectors._rl_stats import token_entropy as token_entropy
from logprobe.collectors._run import AlertFiredError as AlertFiredError
from logprobe.collectors._run import Run as Run
from logprobe.collectors._run import init as init
from logprobe.collectors._signatures import SIGNATURE_METRICS as SIGNATURE_METRICS
from logprobe.collectors._tap import tap_tensorboard as tap_tensorboard
from logprobe.collectors._tap import tap_wandb as tap_wandb
