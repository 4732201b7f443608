"""W&B run folders (offline ``offline-run-*`` and synced ``run-*``) into logprobe runs.

A run's ``run-<id>.wandb`` file is W&B's transaction log: LevelDB's log format (32 KiB blocks of
records, each a 7-byte header of checksum, length and fragment type) behind a ``:W&B`` header, each
record one ``wandb_internal_pb2.Record`` protobuf. wandb 0.31 reads it only in its Go core, so the
framing is read here (a dozen lines) and every record is decoded by wandb's own ``Record`` class:
``run`` (id, project, name, config, start time) and ``history`` (one row per committed step:
``_step``, ``_timestamp`` and the logged values as JSON). Values are kept exactly as W&B stored
them (JSON numbers, ``NaN`` and ``Infinity`` included); text and media are counted in ``skipped``.
A record cut short by a crash ends the read of that file, and is counted too.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from logprobe.storage._writer import Writer
from logprobe.storage.importers._common import ImportResult, safe_run_id, write_run

_HEADER = b":W&B"
_BLOCK = 32 * 1024
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def import_wandb(
    directory: str | os.PathLike[str], root: str | os.PathLike[str] | None = None, *, prefix: str = "wandb"
) -> ImportResult:
    """Every ``*.wandb`` file under ``directory`` (a ``wandb/`` folder, a run folder, or the file)
    becomes one run, ``<prefix>-<project>-<run id>``."""
    from wandb.proto import wandb_internal_pb2

    base = Path(directory)
    if not base.exists():
        raise FileNotFoundError(f"{base}: no such W&B directory")
    files = [base] if base.is_file() else sorted({p.resolve() for p in base.rglob("*.wandb") if p.is_file()})
    if not files:
        raise ValueError(f"{base}: no W&B run files (run-<id>.wandb) found")
    result = ImportResult()
    with Writer(root) as writer:
        for path in files:
            meta: dict[str, Any] = {}
            points: list[tuple[int, float | None, str, float]] = []
            for raw in _records(path, result):
                record = wandb_internal_pb2.Record()
                record.ParseFromString(raw)
                kind = record.WhichOneof("record_type")
                if kind == "run":
                    meta = _run_meta(record.run)
                elif kind == "history":
                    points.extend(_history_points(record.history, result))
            run_id = meta.get("id") or path.stem.removeprefix("run-")
            write_run(
                writer,
                safe_run_id(prefix, meta.get("project") or "", run_id),
                source="wandb",
                name=meta.get("name") or run_id,
                project=meta.get("project"),
                config=meta.get("config"),
                created_at=meta.get("start_time"),
                points=points,
                result=result,
            )
    return result


def _records(path: Path, result: ImportResult) -> Iterator[bytes]:
    """The records of one transaction log, reassembled from their fragments."""
    data = path.read_bytes()
    if data[:4] != _HEADER:
        raise ValueError(f"{path}: not a W&B run file (no :W&B header)")
    pos, pending = 7, b""  # the header: ident, magic, version
    while pos + 7 <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        _checksum, length, kind = struct.unpack_from("<IHB", data, pos)
        pos += 7
        if kind == 0 and length == 0:  # zeroed space (preallocated, or the end of a block)
            continue
        if pos + length > len(data):  # cut short by a crash
            result.skipped += 1
            return
        chunk = data[pos : pos + length]
        pos += length
        if kind == _FULL:
            yield chunk
        elif kind == _FIRST:
            pending = chunk
        elif kind == _MIDDLE:
            pending += chunk
        elif kind == _LAST:
            yield pending + chunk
            pending = b""


def _run_meta(run: Any) -> dict[str, Any]:
    config = {}
    for item in run.config.update:
        key = item.key or ".".join(item.nested_key)
        if key != "_wandb":
            config[key] = _json(item.value_json)
    start = run.start_time.seconds + run.start_time.nanos / 1e9 if run.HasField("start_time") else None
    return {
        "id": run.run_id,
        "project": run.project or None,
        "name": run.display_name or None,
        "config": config,
        "start_time": start or None,
    }


def _history_points(history: Any, result: ImportResult) -> Iterator[tuple[int, float | None, str, float]]:
    values = {(item.key or ".".join(item.nested_key)): _json(item.value_json) for item in history.item}
    step = values.get("_step", history.step.num)
    ts = values.get("_timestamp")
    for name, value in values.items():
        if name.startswith("_"):  # W&B's own bookkeeping: _step, _timestamp, _runtime
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            result.skipped += 1
            continue
        yield int(step), float(ts) if isinstance(ts, int | float) else None, name, float(value)


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text
