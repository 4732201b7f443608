"""TRL: ``LogprobeCallback`` for GRPOTrainer or any Hugging Face trainer (``logprobe.collectors.trl``)."""

from logprobe.collectors.trl import *  # noqa: F403 (this module is the public name of that one)
from logprobe.collectors.trl import __all__  # noqa: F401
