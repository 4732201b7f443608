"""``Run``: the handle a training loop (or a rollout worker) logs through."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import socket
import subprocess
import time
import uuid
from collections.abc import Mapping
from typing import Any

from collectors._mismatch import DEFAULT_C, DEFAULT_EPS, DEFAULT_TOP_K, compute_mismatch
from storage import SCHEMAS, Writer, check_name

log = logging.getLogger(__name__)

_ENGINE_COLUMNS = {f.name for f in SCHEMAS["engines"]} - {
    "ts",
    "source",
    "rank",
    "worker",
    "flags",
    "fingerprint",
}


class Run:
    """Logs one process's view of a run: metrics, mismatch stats, events and engine configs."""

    def __init__(
        self,
        writer: Writer,
        run_id: str,
        *,
        source: str = "trainer",
        rank: int = 0,
        worker: str | None = None,
    ) -> None:
        self.writer = writer
        self.run_id = check_name("run_id", run_id)
        self.source = source
        self.rank = int(rank)
        self.worker = worker
        self._closed = False
        self._owns_writer = True
        self.alerts: Any = None  # a monitor.AlertEngine, evaluated on every log()
        self.on_alert = "log"

    # -------------------------------------------------------------- scalars

    def log(self, step: int, metrics: Mapping[str, Any], policy_version: int | None = None) -> None:
        """Queue scalar metrics for ``step``; never blocks on I/O.

        Values may be Python, numpy or torch scalars. A value that is not one number is skipped,
        counted (``writer.stats().values_invalid``) and recorded once as an ``invalid_metric`` event.
        """
        if type(step) is not int:
            step = _as_int("step", step)
        if policy_version is not None and type(policy_version) is not int:
            policy_version = _as_int("policy_version", policy_version)
        if not isinstance(metrics, Mapping):
            raise TypeError(f"metrics must be a dict of name -> number, got {type(metrics).__name__}")
        self.writer.log_metrics(
            self.run_id,
            step,
            metrics,
            policy_version=policy_version,
            source=self.source,
            rank=self.rank,
            worker=self.worker,
        )
        if self.alerts is not None:
            self._check_alerts(step, metrics)

    def _check_alerts(self, step: int, metrics: Mapping[str, Any]) -> None:
        try:
            changed = self.alerts.observe(self.run_id, step, metrics)
        except Exception as exc:  # a broken rule must not stop training
            log.warning("logprobe: alert evaluation failed: %s", exc)
            return
        for alert in changed:
            self.writer.append(
                "alerts",
                self.run_id,
                {**alert.row(), "source": self.source, "rank": self.rank, "worker": self.worker},
            )
        firing = [a for a in changed if a.state == "firing"]
        if firing and self.on_alert == "raise":
            self.writer.flush()
            first = firing[0]
            raise AlertFiredError(f"run {self.run_id} step {step}: {first.message} (rule {first.rule})")

    def log_mismatch(
        self,
        step: int,
        trainer_logprobs: Any,
        rollout_logprobs: Any,
        mask: Any = None,
        *,
        seq_lens: Any = None,
        token_ids: Any = None,
        tokenizer: Any = None,
        policy_version: int | None = None,
        eps: float = DEFAULT_EPS,
        C: float = DEFAULT_C,  # noqa: N803
        top_k: int = DEFAULT_TOP_K,
    ) -> dict[str, float]:
        """Log every ``mismatch/*`` metric, the log-ratio histogram and the worst ``top_k`` tokens.

        Input is padded ``[B, T]`` with ``mask``, or packed 1-D with ``seq_lens``. Returns the stats so
        the trainer can act on them (for example to skip a batch). Raises ValueError/TypeError on
        malformed input, before anything is logged.
        """
        step = _as_int("step", step)
        result = compute_mismatch(
            trainer_logprobs,
            rollout_logprobs,
            mask,
            seq_lens=seq_lens,
            token_ids=token_ids,
            eps=eps,
            C=C,
            top_k=top_k,
        )
        self.log(step, result.stats, policy_version)
        base = {
            "step": step,
            "policy_version": policy_version,
            "source": self.source,
            "rank": self.rank,
            "worker": self.worker,
        }
        ts = time.time()
        for row in result.histogram:
            self.writer.append("histograms", self.run_id, {**base, "ts": ts, "name": "log_ratio", **row})
        for row in result.worst:
            text = _decode(tokenizer, row["token_id"])
            self.writer.append("tokens", self.run_id, {**base, "ts": ts, "token_text": text, **row})
        nonfinite = int(result.stats["mismatch/n_nonfinite"])
        if nonfinite:
            self.event("nonfinite", step=step, tokens=nonfinite, where="log_mismatch")
        return result.stats

    # -------------------------------------------------------------- events and engines

    def event(self, kind: str, step: int | None = None, **payload: Any) -> None:
        """Record something that happened (``weight_update``, ``config_change``, ...) with a JSON payload."""
        if not isinstance(kind, str) or not kind:
            raise TypeError(f"event kind must be a non-empty str, got {kind!r}")
        self.writer.append(
            "events",
            self.run_id,
            {
                "step": None if step is None else _as_int("step", step),
                "source": self.source,
                "rank": self.rank,
                "worker": self.worker,
                "kind": kind,
                "payload": to_json(payload),
            },
        )

    def log_engine(self, config: Mapping[str, Any], step: int | None = None) -> str:
        """Record an engine configuration; returns its fingerprint.

        Keys that match an ``engines`` column fill it. ``flags`` (JSON) holds ``config["flags"]``
        when given (the vLLM collector passes every resolved arg there), else the whole config;
        the fingerprint is ``config["fingerprint"]`` when given, else a hash of ``flags``.
        """
        if not isinstance(config, Mapping):
            raise TypeError(f"engine config must be a dict, got {type(config).__name__}")
        plain = json.loads(to_json(dict(config)))
        flags = plain.pop("flags", None) or plain
        fingerprint = (
            plain.get("fingerprint")
            or hashlib.sha256(json.dumps(flags, sort_keys=True).encode()).hexdigest()[:16]
        )
        row = {k: v for k, v in plain.items() if k in _ENGINE_COLUMNS}
        row.update(
            step_first=None if step is None else _as_int("step", step),
            source=self.source,
            rank=self.rank,
            worker=self.worker,
            flags=json.dumps(flags, sort_keys=True),
            fingerprint=fingerprint,
        )
        self.writer.append("engines", self.run_id, row)
        return fingerprint

    def with_source(self, source: str, worker: str | None = None) -> Run:
        """A view of this run that logs as another source (e.g. ``rollout`` beside ``trainer``).

        It shares this run's writer (one set of files per process); closing it only ends the view.
        """
        view = Run(self.writer, self.run_id, source=source, rank=self.rank, worker=worker)
        view._owns_writer = False
        return view

    # -------------------------------------------------------------- lifecycle

    def close(self, status: str = "finished") -> None:
        """Mark this process's part of the run ended and write everything out."""
        if self._closed:
            return
        self._closed = True
        if not self._owns_writer:
            return
        self.event("run_end", status=status)
        stats = self.writer.close()
        if stats.rows_dropped:
            log.warning(
                "logprobe: run %s dropped %d row(s) (%s)",
                self.run_id,
                stats.rows_dropped,
                stats.last_error or "see earlier warnings",
            )

    def __enter__(self) -> Run:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        self.close("failed" if exc_type is not None else "finished")


def init(
    run_id: str | None = None,
    root: str | os.PathLike[str] | None = None,
    name: str | None = None,
    project: str | None = None,
    config: Any = None,
    source: str = "trainer",
    rank: int = 0,
    flush_interval: float = 1.0,
    *,
    tags: list[str] | None = None,
    worker: str | None = None,
    alerts: Any = None,
    on_alert: str = "log",
) -> Run:
    """Start (or join, with the same ``run_id``) a run and write its ``runs`` row.

    ``root`` defaults to ``$LOGPROBE_DIR``, else ``./logprobe-data``. Several processes (ranks,
    rollout workers) join one run by passing the same ``run_id``; each writes its own files.

    ``alerts``: ``True`` for the shipped rules, a TOML rule file, or a ``monitor.AlertEngine``;
    rules are evaluated on every ``log`` and alerts land in the ``alerts`` table. With
    ``on_alert="raise"`` a firing alert raises :class:`AlertFiredError` to stop a run gone off the rails.
    """
    if on_alert not in ("log", "raise"):
        raise ValueError(f"on_alert must be 'log' or 'raise', got {on_alert!r}")
    run_id = check_name("run_id", run_id or f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}")
    writer = Writer(root, flush_interval=flush_interval)
    run = Run(writer, run_id, source=source, rank=rank, worker=worker)
    if alerts is not None and alerts is not False:
        # The rule engine is pure Python shared with the store watcher; imported only when asked for.
        import monitor

        if alerts is True:
            run.alerts = monitor.AlertEngine()
        elif isinstance(alerts, monitor.AlertEngine):
            run.alerts = alerts
        else:
            run.alerts = monitor.AlertEngine.from_file(alerts)
        run.on_alert = on_alert
    from collectors import __version__

    writer.append(
        "runs",
        run_id,
        {
            "name": name or run_id,
            "project": project,
            "created_at": time.time(),
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "git_sha": _git_sha(),
            "tags": list(tags) if tags else None,
            "config": to_json(config) if config is not None else None,
            "logprobe_version": __version__,
            "source": source,
            "rank": int(rank),
            "worker": worker,
        },
    )
    run.event("run_start")
    return run


class AlertFiredError(RuntimeError):
    """Raised by ``Run.log`` when an alert fires and the run was started with ``on_alert="raise"``."""


def to_json(value: Any) -> str:
    """JSON for user objects that may not be JSON (dataclasses, HF configs, Namespaces, tensors)."""
    return json.dumps(value, default=_jsonable, sort_keys=True, allow_nan=True)


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    for method in ("to_dict", "model_dump", "tolist"):
        fn = getattr(value, method, None)
        if callable(fn):
            try:
                return fn()
            except Exception:  # a broken to_dict must not stop the run from starting
                break
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    if hasattr(value, "__dict__") and type(value).__module__ == "argparse":
        return vars(value)
    return repr(value)


def _as_int(name: str, value: Any) -> int:
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    try:
        as_int = int(value)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}") from exc
    if as_int != value:
        raise TypeError(f"{name} must be an integer, got {value!r}")
    return as_int


def _decode(tokenizer: Any, token_id: int | None) -> str | None:
    if tokenizer is None or token_id is None:
        return None
    try:
        return tokenizer.decode([token_id])
    except Exception:  # a tokenizer that cannot decode one id must not lose the row
        return None


def _git_sha() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=2)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None
