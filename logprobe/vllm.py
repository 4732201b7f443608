"""The rollout side: engine fingerprints, rollouts, weight updates and vLLM stat loggers."""

from logprobe.collectors.vllm import *  # noqa: F403 (this module is the public name of that one)
from logprobe.collectors.vllm import __all__  # noqa: F401
