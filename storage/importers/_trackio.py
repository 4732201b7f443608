"""A Trackio project (its local SQLite file) into logprobe runs.

Trackio keeps one SQLite database per project with a ``metrics`` table (one JSON object of values
per logged step) and a ``configs`` table; both are read here with the standard library.
"""

from __future__ import annotations

import datetime
import json
import os
import sqlite3
from pathlib import Path

from logprobe.storage._writer import Writer
from logprobe.storage.importers._common import ImportResult, safe_run_id, write_run


def import_trackio(
    project_db: str | os.PathLike[str], root: str | os.PathLike[str] | None = None, *, prefix: str = "trackio"
) -> ImportResult:
    """Every run in the project becomes ``<prefix>-<run name>``; non-numbers are counted, not stored."""
    path = Path(project_db)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such Trackio project database")
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "metrics" not in tables:
            raise ValueError(f"{path}: not a Trackio project database (no metrics table)")
        configs = {}
        if "configs" in tables:
            for run_name, config, created in con.execute("SELECT run_name, config, created_at FROM configs"):
                configs[run_name] = (json.loads(config), _epoch(created))
        rows = con.execute("SELECT run_name, step, timestamp, metrics FROM metrics ORDER BY id").fetchall()
    finally:
        con.close()
    by_run: dict[str, list[tuple[int, float | None, str, float]]] = {}
    result = ImportResult()
    for run_name, step, timestamp, blob in rows:
        values = json.loads(blob)
        ts = _epoch(timestamp)
        points = by_run.setdefault(run_name, [])
        for name, value in values.items():
            if isinstance(value, bool) or not isinstance(value, int | float):
                result.skipped += 1
                continue
            points.append((step, ts, name, float(value)))
    with Writer(root) as writer:
        for run_name in sorted(set(by_run) | set(configs)):
            config, created = configs.get(run_name, (None, None))
            write_run(
                writer,
                safe_run_id(prefix, run_name),
                source="trackio",
                name=run_name,
                project=path.stem,
                config=config,
                created_at=created,
                points=by_run.get(run_name, []),
                result=result,
            )
    return result


def _epoch(text: str | None) -> float | None:
    return datetime.datetime.fromisoformat(text).timestamp() if text else None
