"""How much of the machine logprobe's own DuckDB work may take.

A trainer or a rollout engine usually shares the node with the dashboard, the console and the
compaction job, so their DuckDB connections get a quarter of the memory (at most 4 GiB) instead of
DuckDB's default 80%.
"""

from __future__ import annotations

import os


def default_memory_limit() -> str:
    """A DuckDB ``memory_limit`` value: a quarter of physical memory, between 256 MiB and 4 GiB."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return "4GiB"
    return f"{max(256, min(4096, total // 4 // 2**20))}MiB"
