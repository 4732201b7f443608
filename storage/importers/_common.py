"""What the importers share: run ids from foreign names, and one writer call per imported run."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from logprobe.storage._name_maps import map_name
from logprobe.storage._writer import Writer

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass
class ImportResult:
    run_ids: list[str] = field(default_factory=list)
    points: int = 0
    skipped: int = 0  # values that were not numbers (text, media), counted rather than dropped silently


def safe_run_id(*parts: str) -> str:
    """A valid run id from foreign names (``exp/run 1`` -> ``exp-run-1``), at most 200 characters."""
    text = "-".join(_UNSAFE.sub("-", p).strip("-._") for p in parts if p)
    return (text or "imported")[:200].strip("-._") or "imported"


def write_run(
    writer: Writer,
    run_id: str,
    *,
    source: str,
    name: str,
    project: str | None,
    config: Any,
    created_at: float | None,
    points: Iterable[tuple[int, float | None, str, float]],  # step, wall time (s), name, value
    result: ImportResult,
) -> None:
    """Write one imported run: its ``runs`` row, every point (names mapped), and an ``imported`` event."""
    mapped: dict[str, str] = {}
    first_ts = None
    for step, ts, metric, value in points:
        target = map_name(metric)
        if target != metric:
            mapped[metric] = target
        writer.log_metrics(run_id, int(step), {target: value}, source=source, ts=ts)
        first_ts = ts if first_ts is None or (ts is not None and ts < first_ts) else first_ts
        result.points += 1
    created = created_at if created_at is not None else first_ts if first_ts is not None else time.time()
    writer.append(
        "runs",
        run_id,
        {
            "name": name,
            "project": project,
            "created_at": created,
            "config": json.dumps(config, sort_keys=True, default=str) if config is not None else None,
            "tags": ["imported", source],
            "source": source,
        },
    )
    writer.append(
        "events",
        run_id,
        {
            "kind": "imported",
            "source": source,
            "payload": json.dumps({"source": source, "mapped": mapped}, sort_keys=True),
        },
    )
    result.run_ids.append(run_id)
