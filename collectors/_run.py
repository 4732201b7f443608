"""``Run``: the handle a training loop (or a rollout worker) logs through."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa

from logprobe.collectors._mismatch import (
    DEFAULT_C,
    DEFAULT_EPS,
    DEFAULT_SAMPLES,
    DEFAULT_TOP_K,
    compute_mismatch,
)
from logprobe.collectors._values import (
    fingerprint,
    real_number,
    short_repr,
    to_json,
    valid_text,
    whole_number,
)
from logprobe.storage import SCHEMAS, Writer, check_name

log = logging.getLogger(__name__)

_ENGINE_COLUMNS = {f.name for f in SCHEMAS["engines"]} - {
    "ts",
    "source",
    "rank",
    "worker",
    "flags",
    "fingerprint",
}
# Steps and versions are int64 columns: a bigger int would fail the whole batch at flush time.
_I64_MIN, _I64_MAX = -(2**63), 2**63 - 1
_I32_MIN, _I32_MAX = -(2**31), 2**31 - 1


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
        self.source, self.rank, self.worker = _origin(source, rank, worker)
        self._closed = False
        self._owns_writer = True
        self.alerts: Any = None  # a monitor.AlertEngine, evaluated on every log()
        self.detectors: Any = None  # a monitor.RunMonitor beside it, its findings kept in the store
        self.evidence: Any = None  # a monitor.EvidenceWindow: what names an alert's cause inline
        self.on_alert = "log"

    # -------------------------------------------------------------- scalars

    def log(self, step: int, metrics: Mapping[str, Any], policy_version: int | None = None) -> None:
        """Queue scalar metrics for ``step``; never blocks on I/O.

        Values may be Python, numpy or torch scalars. A value that is not one number is skipped,
        counted (``writer.stats().values_invalid``) and recorded once as an ``invalid_metric`` event.
        """
        if type(step) is not int or not _I64_MIN <= step <= _I64_MAX:
            step = _as_int("step", step)
        if policy_version is not None and (
            type(policy_version) is not int or not _I64_MIN <= policy_version <= _I64_MAX
        ):
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
        if self.evidence is not None:
            try:
                self.evidence.observe(step, metrics)
            except Exception as exc:  # the window only serves the alerts' message
                log.warning("logprobe: evidence window failed: %s", exc)
        if self.detectors is not None:
            self._check_detectors(step, metrics)
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

    def _check_detectors(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Feed this step to the calibrated detectors; findings that open, worsen or close land in
        the ``findings`` table at once, so readers never rescan this run."""
        try:
            changed = self.detectors.observe(step, metrics)
        except Exception as exc:  # a detector bug must not stop training
            log.warning("logprobe: drift detection failed: %s", exc)
            return
        now = time.time()
        for finding in changed:
            self.writer.append(
                "findings",
                self.run_id,
                {**finding.row(), "ts": now, "source": self.source, "rank": self.rank, "worker": self.worker},
            )

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
        rollout_token_ids: Any = None,
        rollout_versions: Any = None,
        weight_versions: Sequence[int | None] | None = None,
        prompt_ids: Sequence[Sequence[int]] | None = None,
        prompt_lens: Any = None,
        signatures: bool = True,
        samples: int = DEFAULT_SAMPLES,
        eps: float = DEFAULT_EPS,
        C: float = DEFAULT_C,  # noqa: N803
        top_k: int = DEFAULT_TOP_K,
    ) -> dict[str, float]:
        """Log every ``mismatch/*`` and ``signature/*`` metric, the log-ratio histogram, the worst
        ``top_k`` tokens and ``samples`` whole sequences (the ``sequences`` table).

        Input is padded ``[B, T]`` with ``mask``, or packed 1-D with ``seq_lens``. The optional
        per-sequence inputs sharpen the diagnosis: ``rollout_versions`` (the policy version each
        sequence was sampled from; needs ``policy_version``) shows policy lag, ``rollout_token_ids``
        (the engine's ids) shows retokenisation, ``prompt_ids`` / ``prompt_lens`` and
        ``weight_versions`` are kept with the sampled sequences for replay. Returns the stats so the
        trainer can act on them (for example to skip a batch). Raises ValueError/TypeError on
        malformed input, before anything is logged.
        """
        step = _as_int("step", step)
        if policy_version is not None:
            policy_version = _as_int("policy_version", policy_version)
        if prompt_ids is not None and prompt_lens is None:
            prompt_lens = [len(p) for p in prompt_ids]
        result = compute_mismatch(
            trainer_logprobs,
            rollout_logprobs,
            mask,
            seq_lens=seq_lens,
            token_ids=token_ids,
            rollout_token_ids=rollout_token_ids,
            rollout_versions=rollout_versions,
            policy_version=policy_version,
            prompt_lens=prompt_lens,
            eps=eps,
            C=C,
            top_k=top_k,
            signatures=signatures,
            samples=samples,
            sample_seed=step,
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
        for row in result.sequences:
            index = row["seq_index"]
            extra = {
                "prompt_ids": _nth_ids("prompt_ids", prompt_ids, index),
                "weight_version": _nth_version(weight_versions, index),
            }
            self.writer.append("sequences", self.run_id, {**base, "ts": ts, **row, **extra})
            if self.evidence is not None and None not in (extra["weight_version"], row["rollout_version"]):
                self.evidence.gap(step, extra["weight_version"] - row["rollout_version"])
        nonfinite = int(result.stats["mismatch/n_nonfinite"])
        if nonfinite:
            self.event("nonfinite", step=step, tokens=nonfinite, where="log_mismatch")
        return result.stats

    # -------------------------------------------------------------- events and engines

    def event(self, kind: str, step: int | None = None, **payload: Any) -> None:
        """Record something that happened (``weight_update``, ``config_change``, ...) with a JSON payload."""
        if not isinstance(kind, str) or not kind:
            raise TypeError(f"event kind must be a non-empty str, got {short_repr(kind)}")
        _text("event kind", kind)
        step = None if step is None else _as_int("step", step)
        payload_json = to_json(payload)
        if self.evidence is not None:
            self.evidence.event(step, kind, json.loads(payload_json))
        self.writer.append(
            "events",
            self.run_id,
            {
                "step": step,
                "source": self.source,
                "rank": self.rank,
                "worker": self.worker,
                "kind": kind,
                "payload": payload_json,
            },
        )

    def log_engine(self, config: Mapping[str, Any], step: int | None = None) -> str:
        """Record an engine configuration; returns its fingerprint.

        Keys that match an ``engines`` column fill it. ``flags`` (JSON) holds ``config["flags"]``
        when given (the vLLM collector passes every resolved arg there), else the whole config;
        the fingerprint is ``config["fingerprint"]`` when given, else ``flags``' by the one rule
        (:func:`collectors.vllm.fingerprint`: ids, ports and paths left out).
        """
        if not isinstance(config, Mapping):
            raise TypeError(f"engine config must be a dict, got {type(config).__name__}")
        given = config.get("fingerprint")
        if given is not None and not isinstance(given, str):
            raise TypeError(f"engine config field 'fingerprint' must be a str, got {short_repr(given)}")
        _text("engine config field 'fingerprint'", given)
        plain = json.loads(to_json(dict(config)))
        flags = plain.pop("flags", None) or plain
        digest = given or fingerprint(flags if isinstance(flags, dict) else {"config": flags})
        row = {k: v for k, v in plain.items() if k in _ENGINE_COLUMNS}
        for column, value in row.items():
            _check_engine_value(column, value)  # a wrong type would silently drop the whole row
        row.update(
            step_first=None if step is None else _as_int("step", step),
            source=self.source,
            rank=self.rank,
            worker=self.worker,
            flags=json.dumps(flags, sort_keys=True),
            fingerprint=digest,
        )
        self.writer.append("engines", self.run_id, row)
        if self.evidence is not None:
            self.evidence.engine({**plain, **row})
        return digest

    def _explain(self, run_id: str) -> Any:
        """This run's likely cause, for an alert that fires on it (the rule engine asks)."""
        return self.evidence.explain() if self.evidence is not None and run_id == self.run_id else None

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
    reference: str | None = None,
) -> Run:
    """Start (or join, with the same ``run_id``) a run and write its ``runs`` row.

    ``root`` defaults to ``$LOGPROBE_DIR``, else ``./logprobe-data``. Several processes (ranks,
    rollout workers) join one run by passing the same ``run_id``; each writes its own files.

    ``alerts``: ``True`` for the shipped rules, a TOML rule file, or a ``monitor.AlertEngine``;
    rules are evaluated on every ``log`` and alerts land in the ``alerts`` table. With
    ``on_alert="raise"`` a firing alert raises :class:`AlertFiredError` to stop a run gone off the rails.
    With ``alerts``, the monitor's calibrated detectors also run inline and write their findings to
    the ``findings`` table as they happen.

    ``reference``: the id of a healthy run this one is judged against (recorded in ``runs``): a
    mismatch floor several times the reference's is flagged even under the field's thresholds.
    """
    # Everything is checked before the writer exists: a rejected argument must not leave a
    # background thread behind, nor a half-written run.
    if not isinstance(on_alert, str) or on_alert not in ("log", "raise"):
        raise ValueError(f"on_alert must be 'log' or 'raise', got {short_repr(on_alert)}")
    if root is not None and not isinstance(root, str | os.PathLike):
        raise TypeError(f"root must be a path, got {type(root).__name__}")
    run_id = check_name("run_id", run_id or f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}")
    name = _text("name", name)
    project = _text("project", project)
    source, rank, worker = _origin(source, rank, worker)
    flush_interval = real_number("flush_interval", flush_interval, low=0.0)
    if tags is not None:
        if not isinstance(tags, list | tuple) or not all(isinstance(t, str) for t in tags):
            raise TypeError(f"tags must be a list of str, got {short_repr(tags)}")
        tags = [_text("tags", t) for t in tags]
    config_json = to_json(config) if config is not None else None
    if reference is not None:
        reference = check_name("reference", reference)
    engine = _alert_engine(alerts)
    writer = Writer(root, flush_interval=flush_interval)
    run = Run(writer, run_id, source=source, rank=rank, worker=worker)
    if engine is not None:
        run.alerts = engine
        run.on_alert = on_alert
        run.detectors = _detectors(writer, run_id, reference)
        run.evidence = _evidence_window(writer, run_id, reference)
        engine.explain = run._explain
        run.event("monitor", by="inline", reference=reference)
    from logprobe import __version__

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
            "tags": tags or None,
            "config": config_json,
            "logprobe_version": __version__,
            "source": source,
            "rank": rank,
            "worker": worker,
            "reference_run": reference,
        },
    )
    run.event("run_start")
    return run


class AlertFiredError(RuntimeError):
    """Raised by ``Run.log`` when an alert fires and the run was started with ``on_alert="raise"``."""


def _text(name: str, value: Any) -> Any:
    """``value`` if it is None or a str that can be written as UTF-8, else an error naming ``name``."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, got {type(value).__name__} {short_repr(value)}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"{name} is not valid text: lone surrogate at position {exc.start}") from None
    return value


def _origin(source: Any, rank: Any, worker: Any) -> tuple[str, int, str | None]:
    """The columns every row carries, checked once here rather than failing every flush later."""
    if not isinstance(source, str) or not source:
        raise TypeError(f"source must be a non-empty str, got {short_repr(source)}")
    _text("source", source)
    rank = _as_int("rank", rank)
    if not _I32_MIN <= rank <= _I32_MAX:
        raise ValueError(f"rank must fit in a 32-bit integer, got {rank}")
    return source, rank, _text("worker", worker)


def _alert_engine(alerts: Any) -> Any:
    if alerts is None or alerts is False:
        return None
    # The rule engine is pure Python shared with the store watcher; imported only when asked for.
    from logprobe import monitor

    if alerts is True:
        return monitor.AlertEngine()
    if isinstance(alerts, monitor.AlertEngine):
        return alerts
    if not isinstance(alerts, str | os.PathLike):
        raise TypeError(
            f"alerts must be True, a rule file path or a monitor.AlertEngine, got {type(alerts).__name__}"
        )
    return monitor.AlertEngine.from_file(alerts)


def _detectors(writer: Writer, run_id: str, reference: str | None) -> Any:
    """The inline RunMonitor, judged against ``reference`` when that run has metrics in the store;
    a store that cannot be read only costs the reference comparison, never the run."""
    from logprobe import monitor, storage

    ref = None
    if reference is not None:
        try:
            ref = monitor.load_reference(storage.Store(writer.root), reference)
        except Exception as exc:
            log.warning("logprobe: reference run %s unreadable, judging without it: %s", reference, exc)
        else:
            if ref is None:
                log.warning("logprobe: reference run %s has no metrics yet; judging without it", reference)
    return monitor.RunMonitor(run_id, reference=ref)


def _evidence_window(writer: Writer, run_id: str, reference: str | None) -> Any:
    """The window that names causes inline, judged against the reference's level (its 90th
    percentile of mean |d|) when that run is in the store."""
    from logprobe import monitor, storage

    level = median = None
    if reference is not None:
        try:
            store = storage.Store(writer.root)
            level, median = (
                monitor.reference_level(store, reference),
                monitor.reference_level(store, reference, 0.5),
            )
        except Exception as exc:
            log.warning("logprobe: reference run %s unreadable for diagnosis: %s", reference, exc)
    return monitor.EvidenceWindow(run_id, reference_level=level, reference_median=median)


_ENGINE_TYPES = {f.name: f.type for f in SCHEMAS["engines"]}


def _check_engine_value(column: str, value: Any) -> None:
    if value is None:
        return
    kind = _ENGINE_TYPES[column]
    where = f"engine config field {column!r}"
    if pa.types.is_string(kind):
        ok = isinstance(value, str)
    elif pa.types.is_boolean(kind):
        ok = isinstance(value, bool)
    elif pa.types.is_integer(kind):
        ok = isinstance(value, int) and not isinstance(value, bool)
        if ok and not -(2 ** (kind.bit_width - 1)) <= value < 2 ** (kind.bit_width - 1):
            raise ValueError(f"{where} must fit in a {kind.bit_width}-bit integer, got {value}")
    else:
        ok = True
    if not ok:
        raise TypeError(f"{where} must be {kind}, got {type(value).__name__} {short_repr(value)}")


def _as_int(name: str, value: Any) -> int:
    as_int = whole_number(name, value)
    if not _I64_MIN <= as_int <= _I64_MAX:
        raise ValueError(f"{name} must fit in a signed 64-bit integer, got {as_int}")
    return as_int


def _nth_ids(name: str, rows: Sequence[Sequence[int]] | None, index: int) -> list[int] | None:
    """Row ``index`` of a per-sequence list of ids, as ints; None when absent or not ids (a bad
    prompt must cost its record, not the step)."""
    if rows is None or index >= len(rows):
        return None
    try:
        return [int(x) for x in rows[index]]
    except (TypeError, ValueError):
        log.warning("logprobe: %s[%d] is not a list of token ids; not recorded", name, index)
        return None


def _nth_version(versions: Sequence[int | None] | None, index: int) -> int | None:
    if versions is None or index >= len(versions) or versions[index] is None:
        return None
    try:
        return _as_int("weight_versions", versions[index])
    except (TypeError, ValueError):
        return None


def _decode(tokenizer: Any, token_id: int | None) -> str | None:
    if tokenizer is None or token_id is None:
        return None
    try:
        text = tokenizer.decode([token_id])
    except Exception:  # a tokenizer that cannot decode one id must not lose the row
        return None
    # Anything but text would make the writer drop the whole tokens row.
    return valid_text(text) if isinstance(text, str) else None


def _git_sha() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=2)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None
