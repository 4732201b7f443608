"""Benchmarks for logprobe; each module runs as ``python -m bench.<name>`` and writes its own report."""
