"""verl: ``LogprobeBackend``, a tracking backend for verl's ``Tracking`` (``logprobe.collectors.verl``)."""

from logprobe.collectors.verl import *  # noqa: F403 (this module is the public name of that one)
from logprobe.collectors.verl import __all__  # noqa: F401
