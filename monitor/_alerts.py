"""Alert rules, their evaluation, and where alerts go.

A rule file is TOML::

    [[rule]]
    name = "k3-bad"            # unique
    metric = "mismatch/k3"
    above = 1e-2               # or: below = ...
    for_steps = 3              # consecutive steps before it fires (hysteresis)
    severity = "bad"           # "warn" | "bad"
    cooldown_s = 300           # after it resolves, stay quiet this long
    notify = ["log", "slack"]  # names from [notifier.*]; "log" is built in

    [notifier.slack]
    kind = "webhook"           # JSON POST; format = "generic" | "slack" | "discord"
    format = "slack"
    url_env = "LOGPROBE_SLACK_URL"   # the URL is read from the environment, never stored

:class:`AlertEngine` is the state machine both the inline collector hook and ``logprobe alerts
watch`` run: it is fed (run, step, metrics) and returns the alerts that changed state. Webhooks
are sent from a background thread with a bounded queue, a timeout and bounded retries, so a slow
or dead endpoint never blocks the training loop; failures are counted.
"""

from __future__ import annotations

import json
import logging
import math
import os
import queue
import re
import threading
import time
import tomllib
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from logprobe.monitor._thresholds import DEFAULT_THRESHOLDS

log = logging.getLogger(__name__)


class RuleError(ValueError):
    """A rule file that cannot be used; the message names the file and the field."""


@dataclass(frozen=True)
class Rule:
    name: str
    metric: str
    above: float | None = None
    below: float | None = None
    for_steps: int = 3
    severity: str = "warn"
    cooldown_s: float = 300.0
    notify: tuple[str, ...] = ("log",)

    def violated(self, value: float) -> bool:
        if not math.isfinite(value):
            return True
        return (self.above is not None and value > self.above) or (
            self.below is not None and value < self.below
        )

    @property
    def threshold(self) -> float:
        return self.above if self.above is not None else float(self.below)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Alert:
    run_id: str
    step: int
    rule: str
    metric: str
    severity: str
    value: float
    threshold: float
    state: str  # "firing" | "resolved"
    message: str
    ts: float = field(default_factory=time.time)
    cause: str | None = None  # the likely cause named when it fired (monitor's cause library)

    def row(self) -> dict[str, Any]:
        """The ``alerts`` table's columns: every field but ``run_id``, which is the partition."""
        row = asdict(self)
        del row["run_id"]
        return row


def default_rules() -> list[Rule]:
    """The shipped rules: docs/design.md's thresholds from the field, held for 3 steps."""
    rules = []
    for metric, thresholds in DEFAULT_THRESHOLDS.items():
        for t in thresholds:
            for severity, level in (("bad", t.bad), ("warn", t.warn)):
                if level is None:
                    continue
                side = "below" if t.lower_is_worse else "above"
                rules.append(
                    Rule(
                        name=f"{metric}-{severity}-{side}",
                        metric=metric,
                        severity=severity,
                        for_steps=t.for_steps,
                        **{side: level},
                    )
                )
    return rules


_RULE_FIELDS = {"name", "metric", "above", "below", "for_steps", "severity", "cooldown_s", "notify"}
_NOTIFIER_FIELDS = {"kind", "url_env", "format", "timeout_s"}
_TOML_POSITION = re.compile(r"\(at line (\d+), column (\d+)\)$")


def load_rules(path: str | os.PathLike[str]) -> tuple[list[Rule], dict[str, dict[str, Any]]]:
    """Rules and notifier settings from a TOML file; a :class:`RuleError` names what is wrong:
    the file and line (``rules.toml:3: ...``) for a syntax error, the file, rule and field otherwise."""
    source = Path(path)
    data = _read_toml(source)
    unknown = set(data) - {"rule", "notifier"}
    if unknown:
        # A misspelt [[rules]] would otherwise load as "no rules" and never fire.
        raise RuleError(
            f"{source}: unknown top-level key(s) {', '.join(sorted(map(repr, unknown)))}; "
            "expected [[rule]] and [notifier.*]"
        )
    notifiers = data.get("notifier", {})
    if not isinstance(notifiers, dict):
        raise RuleError(f"{source}: [notifier] must be a table of named notifiers")
    raw_rules = data.get("rule", [])
    if not isinstance(raw_rules, list):
        raise RuleError(f"{source}: 'rule' must be an array of tables, written [[rule]]")
    rules = [_rule(f"{source}: rule #{i + 1}", raw, notifiers) for i, raw in enumerate(raw_rules)]
    seen: set[str] = set()
    for rule in rules:
        if rule.name in seen:
            raise RuleError(f"{source}: field 'name': rule names must be unique, {rule.name!r} is repeated")
        seen.add(rule.name)
    for name, cfg in notifiers.items():
        where = f"{source}: notifier.{name}"
        if not isinstance(cfg, dict) or cfg.get("kind") != "webhook":
            raise RuleError(f"{where}: field 'kind': only kind = \"webhook\" is supported")
        unknown = set(cfg) - _NOTIFIER_FIELDS
        if unknown:
            raise RuleError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
        if not isinstance(cfg.get("url_env"), str) or not cfg["url_env"]:
            raise RuleError(f"{where}: field 'url_env' must name an environment variable")
        if cfg.get("format", "generic") not in ("generic", "slack", "discord"):
            raise RuleError(f"{where}: field 'format' must be generic, slack or discord")
        if "timeout_s" in cfg and not _number(cfg["timeout_s"], low=0.0):
            raise RuleError(f"{where}: field 'timeout_s' must be a number > 0, got {cfg['timeout_s']!r}")
    return rules, notifiers


def _read_toml(source: Path) -> dict[str, Any]:
    try:
        raw = source.read_bytes()
    except FileNotFoundError:
        raise RuleError(f"{source}: no such rule file") from None
    except OSError as exc:
        raise RuleError(f"{source}: cannot read the rule file: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise RuleError(f"{source}:{line}: not valid TOML: not UTF-8 text ({exc.reason})") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        found = _TOML_POSITION.search(message)
        if found:
            line = int(found.group(1))
            message = f"{message[: found.start()].rstrip()} (column {found.group(2)})"
        else:  # "(at end of document)": the last line
            line = text.count("\n") + (0 if text.endswith("\n") else 1)
        raise RuleError(f"{source}:{max(line, 1)}: not valid TOML: {message}") from None


def _rule(where: str, raw: Any, notifiers: dict[str, Any]) -> Rule:
    if not isinstance(raw, dict):
        raise RuleError(f"{where}: each [[rule]] must be a table")
    if isinstance(raw.get("name"), str):
        where += f" ({raw['name']})"
    unknown = set(raw) - _RULE_FIELDS
    if unknown:
        raise RuleError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
    for needed in ("name", "metric"):
        if not isinstance(raw.get(needed), str) or not raw[needed]:
            raise RuleError(f"{where}: field '{needed}' must be a non-empty string")
    if ("above" in raw) == ("below" in raw):
        raise RuleError(f"{where}: give exactly one of 'above' or 'below'")
    for key in ("above", "below"):
        if key in raw and not _number(raw[key]):
            raise RuleError(f"{where}: field '{key}' must be a number, got {raw[key]!r}")
    if "cooldown_s" in raw and not (_number(raw["cooldown_s"]) and raw["cooldown_s"] >= 0):
        raise RuleError(f"{where}: field 'cooldown_s' must be a number >= 0, got {raw['cooldown_s']!r}")
    for_steps = raw.get("for_steps", 3)
    if isinstance(for_steps, bool) or not isinstance(for_steps, int) or for_steps < 1:
        raise RuleError(f"{where}: field 'for_steps' must be an integer >= 1, got {for_steps!r}")
    if raw.get("severity", "warn") not in ("warn", "bad"):
        raise RuleError(f"{where}: field 'severity' must be 'warn' or 'bad'")
    notify = raw.get("notify", ["log"])
    if not isinstance(notify, list) or not all(isinstance(n, str) for n in notify):
        raise RuleError(f"{where}: field 'notify' must be a list of notifier names")
    missing = [n for n in notify if n != "log" and n not in notifiers]
    if missing:
        raise RuleError(
            f"{where}: field 'notify': notifier(s) {', '.join(missing)} not defined under [notifier.*]"
        )
    return Rule(**{**raw, "notify": tuple(notify)})


def one_number(value: Any) -> float | None:
    """``value`` as a float if it is one number (Python, numpy or torch scalar, one-element array)."""
    if value is None or isinstance(value, str | bytes):
        return None
    try:
        item = getattr(value, "item", None)
        if callable(item):
            size = value.numel() if callable(getattr(value, "numel", None)) else getattr(value, "size", 1)
            if size != 1:
                return None
            value = item()
        return float(value)
    except (TypeError, ValueError, OverflowError, RuntimeError):
        return None


def _number(value: Any, low: float | None = None) -> bool:
    """A finite TOML number (not a bool: ``above = true`` is a typo, not 1), above ``low`` if given."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return False
    return low is None or value > low


class WebhookNotifier:
    """POSTs alerts as JSON from a background thread: never blocks, never raises into the caller."""

    def __init__(
        self,
        url: str,
        *,
        fmt: str = "generic",
        timeout_s: float = 2.0,
        retries: int = 2,
        max_queue: int = 1000,
    ) -> None:
        self.url = url
        self.endpoint = _endpoint(url)  # what logs may name: scheme, host and port, no secret
        self._secrets = _url_secrets(url)
        self.fmt = fmt
        self.timeout_s = timeout_s
        self.retries = retries
        self.sent = 0
        self.failed = 0
        self.dropped = 0
        self._queue: queue.Queue[Alert | None] = queue.Queue(max_queue)
        self._thread = threading.Thread(target=self._run, name="logprobe-webhook", daemon=True)
        self._thread.start()

    def __call__(self, alert: Alert) -> None:
        try:
            self._queue.put_nowait(alert)
        except queue.Full:
            self.dropped += 1

    def payload(self, alert: Alert) -> dict[str, Any]:
        icon = {"firing": ":rotating_light:", "resolved": ":white_check_mark:"}[alert.state]
        text = f"{icon} [{alert.severity}] {alert.run_id} step {alert.step}: {alert.message}"
        if self.fmt == "slack":
            return {"text": text}
        if self.fmt == "discord":
            return {"content": text}
        return {"text": text, **alert.row(), "run_id": alert.run_id}

    def close(self, timeout_s: float = 5.0) -> None:
        try:
            self._queue.put(None, timeout=timeout_s)
        except queue.Full:
            return
        self._thread.join(timeout_s)

    def _run(self) -> None:
        while (alert := self._queue.get()) is not None:
            body = json.dumps(self.payload(alert)).encode()
            for attempt in range(self.retries + 1):
                try:
                    request = urllib.request.Request(
                        self.url, data=body, method="POST", headers={"Content-Type": "application/json"}
                    )
                    with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                        response.read()
                    self.sent += 1
                    break
                except Exception as exc:  # a malformed URL raises ValueError: it must not end the thread
                    if attempt == self.retries:
                        self.failed += 1
                        log.warning(
                            "logprobe: webhook to %s failed after %d tries: %s",
                            self.endpoint,
                            attempt + 1,
                            self._redact(exc),
                        )
                    else:
                        time.sleep(min(0.2 * 2**attempt, 2.0))

    def _redact(self, exc: Exception) -> str:
        """The error for a log line, without the URL's secrets (a Slack webhook's path, a
        ``?token=``, credentials), which some urllib and http.client errors quote."""
        if not isinstance(exc, OSError):  # URLError, HTTPError and timeouts are OSErrors
            return f"{type(exc).__name__} (message withheld: it may quote the URL)"
        text = str(exc)
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text


def _endpoint(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    if not parts.scheme or not parts.hostname:
        return "a malformed URL"
    return f"{parts.scheme}://{parts.hostname}" + (f":{port}" if port else "")


def _url_secrets(url: str) -> list[str]:
    """The parts of a webhook URL that may carry its secret, longest first."""
    parts = urllib.parse.urlsplit(url)
    found = {url, parts.path, parts.query, parts.fragment, parts.username, parts.password}
    found.update(value for _, value in urllib.parse.parse_qsl(parts.query))
    if "@" in parts.netloc:
        found.add(parts.netloc.rpartition("@")[0])
    return sorted((s for s in found if s and len(s) >= 4), key=len, reverse=True)


def log_notifier(alert: Alert) -> None:
    level = logging.WARNING if alert.state == "firing" else logging.INFO
    log.log(
        level, "logprobe alert %s: %s (run %s, step %d)", alert.state, alert.message, alert.run_id, alert.step
    )


class AlertEngine:
    """Per (run, rule): count consecutive violating steps, fire at ``for_steps``, resolve on the
    first clean step, then keep quiet for ``cooldown_s``."""

    def __init__(
        self,
        rules: list[Rule] | None = None,
        notifiers: dict[str, Any] | None = None,
        *,
        clock: Any = time.time,
    ) -> None:
        self.rules = default_rules() if rules is None else list(rules)
        self.notifiers: dict[str, Any] = {"log": log_notifier, **(notifiers or {})}
        self._by_metric: dict[str, list[Rule]] = {}
        for rule in self.rules:
            self._by_metric.setdefault(rule.metric, []).append(rule)
        self._streak: dict[tuple[str, str], int] = {}
        self._firing: dict[tuple[str, str], bool] = {}
        self._quiet_until: dict[tuple[str, str], float] = {}
        self._clock = clock
        # run_id -> its most likely cause (a monitor.Diagnosis) or None; asked when an alert fires, so
        # the message and the webhooks name the cause. Set by the inline collector and the watcher.
        self.explain: Any = None

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> AlertEngine:
        rules, settings = load_rules(path)
        notifiers = {}
        for name, cfg in settings.items():
            url = os.environ.get(cfg["url_env"])
            if not url:
                raise RuleError(f"{path}: notifier.{name}: environment variable {cfg['url_env']} is not set")
            notifiers[name] = WebhookNotifier(
                url, fmt=cfg.get("format", "generic"), timeout_s=float(cfg.get("timeout_s", 2.0))
            )
        return cls(rules, notifiers)

    @property
    def metrics(self) -> set[str]:
        return set(self._by_metric)

    def observe(self, run_id: str, step: int, metrics: dict[str, float]) -> list[Alert]:
        """Feed one step; returns (and notifies) the alerts that changed state.

        A value that is not one number (a string, a tensor of many values or on the ``meta``
        device) is skipped, as the writer skips it, rather than raising and leaving the other
        metrics of the step unjudged.
        """
        changed = []
        for metric, rules in self._by_metric.items():
            value = one_number(metrics.get(metric))
            if value is None:
                continue
            for rule in rules:
                alert = self._step(run_id, step, rule, value)
                if alert is not None:
                    changed.append(alert)
                    self._notify(rule, alert)
        return changed

    def _step(self, run_id: str, step: int, rule: Rule, value: float) -> Alert | None:
        key = (run_id, rule.name)
        side = f"above {rule.above:g}" if rule.above is not None else f"below {rule.below:g}"

        def alert(state: str, message: str) -> Alert:
            return Alert(
                run_id,
                step,
                rule.name,
                rule.metric,
                rule.severity,
                value,
                rule.threshold,
                state,
                f"{rule.metric} = {value:.4g}, {message}",
            )

        if rule.violated(value):
            self._streak[key] = self._streak.get(key, 0) + 1
            if (
                not self._firing.get(key)
                and self._streak[key] >= rule.for_steps
                and self._clock() >= self._quiet_until.get(key, 0.0)
            ):
                self._firing[key] = True
                fired = alert("firing", f"{side} for {self._streak[key]} steps")
                return self._with_cause(fired)
            return None
        self._streak[key] = 0
        if self._firing.get(key):
            self._firing[key] = False
            self._quiet_until[key] = self._clock() + rule.cooldown_s
            back = f"at or below {rule.above:g}" if rule.above is not None else f"at or above {rule.below:g}"
            return alert("resolved", f"back {back}")
        return None

    def _with_cause(self, alert: Alert) -> Alert:
        if self.explain is None:
            return alert
        try:
            cause = self.explain(alert.run_id)
        except Exception as exc:  # naming a cause must never cost the alert
            log.warning("logprobe: diagnosis for an alert failed: %s", exc)
            return alert
        if cause is None:
            return alert
        said = f"{alert.message}; likely cause: {cause.cause} ({cause.confidence:.2f}): {cause.evidence}"
        return replace(alert, message=said, cause=cause.cause)

    def _notify(self, rule: Rule, alert: Alert) -> None:
        for name in rule.notify:
            notifier = self.notifiers.get(name)
            if notifier is None:
                continue
            try:
                notifier(alert)
            except Exception as exc:  # a notifier must never take the caller down
                log.warning("logprobe: notifier %s failed: %s", name, exc)

    def close(self) -> None:
        for notifier in self.notifiers.values():
            closer = getattr(notifier, "close", None)
            if callable(closer):
                closer()
