"""Alerts: the rule state machine, rule files, webhooks against real HTTP servers on 127.0.0.1,
the inline collector hook, and ``logprobe alerts watch`` on a run another process is writing."""

from __future__ import annotations

import http.server
import json
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from logprobe import collectors, monitor
from logprobe.monitor import AlertEngine, Rule, RuleError, WebhookNotifier
from logprobe.storage import Store
from tests.conftest import LOGPROBE

RULE = Rule(name="k3", metric="mismatch/k3", above=0.01, for_steps=2, severity="bad", cooldown_s=10)


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_fires_after_for_steps_resolves_then_keeps_quiet_for_the_cooldown() -> None:
    clock = _Clock()
    engine = AlertEngine([RULE], clock=clock)
    states = []
    for step, k3 in enumerate([0.0, 0.02, 0.0, 0.02, 0.02, 0.03, 0.0, 0.02, 0.02]):
        states += [(a.step, a.state) for a in engine.observe("r", step, {"mismatch/k3": k3})]
    # one-step blip at 1: nothing; fires at 4 (2nd bad step), resolves at 6; 7-8 inside the cooldown
    assert states == [(4, "firing"), (6, "resolved")]
    clock.now += 11
    assert [a.state for a in engine.observe("r", 9, {"mismatch/k3": 0.05})] == ["firing"]
    assert engine.observe("other-run", 9, {"mismatch/k3": 0.05}) == []  # per-run state
    nan = engine.observe("nan-run", 1, {"mismatch/k3": float("nan")}) + engine.observe(
        "nan-run", 2, {"mismatch/k3": float("inf")}
    )
    assert [a.state for a in nan] == ["firing"]  # NaN/Inf count as violations


def test_the_shipped_rules_follow_the_design_thresholds() -> None:
    rules = {r.name: r for r in monitor.default_rules()}
    assert rules["mismatch/k3-bad-above"].above == 1e-2 and rules["mismatch/k3-warn-above"].above == 1e-3
    assert rules["mismatch/ess-bad-below"].below == 0.3
    assert rules["mismatch/abs_prob_diff_mean-warn-above"].above == 0.005


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[rule]\nname = ", "not valid TOML"),
        ('[[rule]]\nname = "a"\nmetric = "m"\nabove = 1\nwhen = 3\n', "rule #1 (a): unknown field(s) when"),
        ('[[rule]]\nname = "a"\nmetric = "m"\n', "give exactly one of 'above' or 'below'"),
        ('[[rule]]\nname = "a"\nmetric = "m"\nabove = "high"\n', "field 'above' must be a number"),
        ('[[rule]]\nname = "a"\nmetric = "m"\nabove = 1\nseverity = "fatal"\n', "field 'severity'"),
        ('[[rule]]\nname = "a"\nmetric = "m"\nabove = 1\nnotify = ["pager"]\n', "pager not defined"),
        ('[[rule]]\nmetric = "m"\nabove = 1\n', "field 'name' must be a non-empty string"),
    ],
)
def test_bad_rule_files_name_the_file_and_field(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "rules.toml"
    path.write_text(text)
    with pytest.raises(RuleError, match=re.escape(message)) as info:
        monitor.load_rules(path)
    assert str(path) in str(info.value)


class _Hook(http.server.BaseHTTPRequestHandler):
    received: list[dict]
    status = 200
    delay = 0.0

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        time.sleep(self.delay)
        type(self).received.append(body)
        self.send_response(self.status)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def _server(status: int = 200, delay: float = 0.0) -> Iterator[tuple[str, list[dict]]]:
    handler = type("Hook", (_Hook,), {"received": [], "status": status, "delay": delay})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", handler.received
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def hook() -> Iterator[tuple[str, list[dict]]]:
    yield from _server()


def _wait(predicate, timeout: float = 5.0) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


@pytest.mark.parametrize("fmt", ["generic", "slack", "discord"])
def test_webhook_payloads(hook: tuple[str, list[dict]], fmt: str) -> None:
    url, received = hook
    notifier = WebhookNotifier(url, fmt=fmt)
    engine = AlertEngine([Rule(**{**RULE.__dict__, "notify": ("hook",)})], {"hook": notifier})
    for step, k3 in enumerate([0.02, 0.02, 0.0]):
        engine.observe("run-1", step, {"mismatch/k3": k3})
    assert _wait(lambda: len(received) == 2)
    notifier.close()
    firing, resolved = received
    if fmt == "slack":
        assert (
            set(firing) == {"text"} and "run-1 step 1" in firing["text"] and "mismatch/k3" in firing["text"]
        )
    elif fmt == "discord":
        assert set(firing) == {"content"} and ":white_check_mark:" in resolved["content"]
    else:
        assert firing["state"] == "firing" and resolved["state"] == "resolved"
        assert firing["run_id"] == "run-1" and firing["rule"] == "k3" and firing["value"] == 0.02
        assert firing["threshold"] == 0.01 and firing["step"] == 1 and "text" in firing
    assert notifier.sent == 2 and notifier.failed == 0


def _closed_port() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}/hook"


@pytest.mark.parametrize("failure", ["down", "500", "hangs"])
def test_a_failing_webhook_never_slows_training(tmp_path: Path, failure: str) -> None:
    servers = {"500": _server(status=500), "hangs": _server(delay=3.0)}
    if failure == "down":
        url, server = _closed_port(), None
    else:
        server = servers[failure]
        url, _ = next(server)
    notifier = WebhookNotifier(url, timeout_s=0.5, retries=1)
    rule = Rule(name="k3", metric="mismatch/k3", above=0.01, for_steps=1, cooldown_s=0, notify=("hook",))
    engine = AlertEngine([rule], {"hook": notifier})
    run = collectors.init(run_id="flaky", root=tmp_path, alerts=engine)
    slowest = 0.0
    for step in range(200):  # alternating: fires and resolves every other step
        started = time.perf_counter()
        run.log(step, {"mismatch/k3": 0.05 if step % 2 else 0.0})
        slowest = max(slowest, time.perf_counter() - started)
    assert slowest < 0.05, f"a log() call took {slowest:.3f} s"
    assert _wait(lambda: notifier.failed >= 1, timeout=10)
    assert notifier.sent == 0 and notifier.failed + notifier.dropped + notifier._queue.qsize() >= 1
    run.close()
    stored = Store(tmp_path).sql("SELECT state, count(*) AS n FROM alerts GROUP BY state ORDER BY state")
    assert stored.to_pylist() == [{"state": "firing", "n": 100}, {"state": "resolved", "n": 99}]
    if server is not None:
        server.close()


def test_on_alert_raise_stops_a_run_gone_off_the_rails(tmp_path: Path) -> None:
    run = collectors.init(run_id="stop", root=tmp_path, alerts=True, on_alert="raise")
    run.log(0, {"mismatch/k3": 1e-5})
    run.log(1, {"mismatch/k3": 0.5})
    run.log(2, {"mismatch/k3": 0.5})
    with pytest.raises(
        collectors.AlertFiredError, match=r"step 3: mismatch/k3 = 0.5, above 0.01 for 3 steps"
    ):
        run.log(3, {"mismatch/k3": 0.5})
    run.close("failed")
    rows = Store(tmp_path).sql("SELECT step, rule, state FROM alerts WHERE rule LIKE '%k3-bad%'").to_pylist()
    assert rows == [{"step": 3, "rule": "mismatch/k3-bad-above", "state": "firing"}]


WRITER = """
import sys, time
from logprobe import collectors
run = collectors.init(run_id="live", root=sys.argv[1], flush_interval=0.2)
for step in range(30):
    run.log(step, {"mismatch/k3": 1e-5})
    time.sleep(0.02)
run.writer.flush()
time.sleep(1.0)
for step in range(30, 33):
    run.log(step, {"mismatch/k3": 0.2})
run.writer.flush()
print(time.time(), flush=True)
time.sleep(4)
run.close()
"""


def test_alerts_watch_fires_within_two_seconds_of_the_flush(tmp_path: Path) -> None:
    watcher = subprocess.Popen(
        [LOGPROBE, "alerts", "watch", "--root", str(tmp_path), "--interval", "0.2"],
        stderr=subprocess.PIPE,
        text=True,
    )
    fired_at: list[float] = []

    def read() -> None:
        for line in watcher.stderr:
            if "firing" in line and "live step 32" in line and "k3" in line:
                fired_at.append(time.time())

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    writer = subprocess.run(
        [sys.executable, "-c", WRITER, str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    assert writer.returncode == 0, writer.stderr
    flushed_at = float(writer.stdout.strip())
    watcher.terminate()
    watcher.wait(10)
    reader.join(5)
    assert fired_at, "the watcher never fired"
    assert fired_at[0] - flushed_at < 2.0
    stored = Store(tmp_path).sql("SELECT step, state FROM alerts WHERE rule = 'mismatch/k3-bad-above'")
    assert stored.to_pylist()[0] == {"step": 32, "state": "firing"}


def _raw_logprob_steps(run: collectors.Run, steps: int, raw: bool, seed: int = 0) -> None:
    """Log steps of a batch whose rollout logprobs are raw (T = 1) against a trainer at T = 0.7."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    run.event("sampling_params", step=0, temperature=0.7, top_p=1.0)
    for step in range(steps):
        logits = torch.randn(16, 12, 30, generator=gen, dtype=torch.float64) * 2.5
        tokens = torch.multinomial(torch.softmax(logits / 0.7, -1).view(-1, 30), 1, generator=gen).view(
            16, 12
        )
        trainer = torch.log_softmax(logits / 0.7, -1).gather(-1, tokens[..., None]).squeeze(-1)
        rollout = torch.log_softmax(logits, -1).gather(-1, tokens[..., None]).squeeze(-1) if raw else trainer
        run.log_mismatch(step, trainer, rollout, token_ids=tokens)


def test_an_inline_alert_names_its_likely_cause_in_the_message_and_the_webhook(
    tmp_path: Path, hook: tuple[str, list[dict]]
) -> None:
    url, received = hook
    with collectors.init(run_id="healthy", root=tmp_path, flush_interval=0.05) as ref:
        _raw_logprob_steps(ref, 6, raw=False)
    rule = Rule(name="k3", metric="mismatch/k3", above=0.01, for_steps=2, severity="bad", notify=("hook",))
    notifier = WebhookNotifier(url)
    engine = AlertEngine([rule], {"hook": notifier})
    with collectors.init(run_id="raw", root=tmp_path, alerts=engine, reference="healthy") as run:
        run.log_engine({"engine": "vllm", "logprobs_mode": "raw_logprobs"}, step=0)
        _raw_logprob_steps(run, 6, raw=True)
    assert _wait(lambda: len(received) >= 1)
    notifier.close()
    firing = received[0]
    assert firing["state"] == "firing" and firing["cause"] == "logprobs_semantics"
    assert "likely cause: logprobs_semantics" in firing["text"] and "slope" in firing["message"]
    with Store(tmp_path) as store:
        (row,) = [a for a in store.sql("SELECT * FROM alerts WHERE run_id = 'raw'").to_pylist()]
        assert row["cause"] == "logprobs_semantics"


def test_the_watcher_names_the_cause_from_the_store(tmp_path: Path) -> None:
    with collectors.init(run_id="healthy", root=tmp_path) as ref:
        _raw_logprob_steps(ref, 6, raw=False)
    with collectors.init(run_id="raw", root=tmp_path, reference="healthy") as run:
        run.log_engine({"engine": "vllm", "logprobs_mode": "raw_logprobs"}, step=0)
        _raw_logprob_steps(run, 6, raw=True)
    rule = Rule(name="k3", metric="mismatch/k3", above=0.01, for_steps=2, severity="bad")
    with Store(tmp_path) as store:
        fired = [a for a in monitor.AlertWatcher(store, AlertEngine([rule])).tick() if a.state == "firing"]
    assert [(a.run_id, a.cause) for a in fired] == [("raw", "logprobs_semantics")]
    assert "likely cause: logprobs_semantics" in fired[0].message
