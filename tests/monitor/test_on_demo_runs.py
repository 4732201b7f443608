"""The monitor on the demo's real runs (torch engine): parity, attribution, correlation, CLI."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from logprobe import monitor
from logprobe.collectors.demo import DEFAULT_STEPS, SCENARIOS
from logprobe.storage import Store
from tests.conftest import LOGPROBE, logprobe_cli

pytestmark = pytest.mark.slow
FAILURES = {  # scenario -> the flag that defines it
    "raw-logprobs": "logprobs_mode",
    "prefix-cache-no-reset": "flags.reset_prefix_cache_on_update",
    "inflight-update": "async_scheduling",
    "bf16-lm-head": "lm_head_dtype",
    "flag-change": "logprobs_mode",
}


HALF = DEFAULT_STEPS // 2  # where flag-change restarts its engine


@pytest.fixture(scope="module")
def root(demo_root: Path) -> Path:
    return demo_root


def test_parity_passes_all_fixed_and_fails_every_failure_mode(root: Path) -> None:
    store = Store(root)
    healthy = monitor.parity(store, "demo-torch-reference", "demo-torch-all-fixed")
    assert healthy.passed and healthy.first_divergence is None
    for scenario, flag in FAILURES.items():
        report = monitor.parity(store, "demo-torch-reference", f"demo-torch-{scenario}")
        assert not report.passed, scenario
        assert report.first_divergence is not None
        assert flag in [k for k, _, _ in report.flag_diff], (scenario, report.flag_diff)
        markdown = report.to_markdown()
        assert f"first divergence at step {report.first_divergence}" in markdown and flag in markdown
    flag_change = monitor.parity(store, "demo-torch-reference", "demo-torch-flag-change")
    assert HALF <= flag_change.first_divergence <= HALF + 2  # the engine restarts at HALF
    assert "<table>" in flag_change.to_html()


def test_flag_change_is_found_and_attributed_to_logprobs_mode(root: Path) -> None:
    store = Store(root)
    run = "demo-torch-flag-change"
    findings = [f for f in monitor.detect_run(store, run) if f.metric == "mismatch/k3"]
    attributed = [a for a in monitor.attribute(store, run, findings) if a.change is not None]
    assert attributed, findings
    change = attributed[0].change
    assert change.step == HALF and [k for k, _, _ in change.diff] == ["logprobs_mode"]
    assert abs(attributed[0].finding.step_first - HALF) <= 2
    assert "logprobs_mode: processed_logprobs -> raw_logprobs" in attributed[0].message


# Faults in the trainer's plumbing leave the engine's flags as the reference's: no flag can explain them.
PLUMBING = ("stale-weights", "policy-lag", "off-by-one")


def test_correlate_ranks_the_defining_flags(root: Path) -> None:
    runs = [f"demo-torch-{name}" for name in SCENARIOS if name not in PLUMBING]
    segs = monitor.segments(Store(root), "mismatch/k3", runs)
    assert len(segs) == len(runs) + 1  # one of them restarted with other flags
    effects = monitor.flag_effects(segs)
    assert [e.p_value for e in effects] == sorted(e.p_value for e in effects)
    by_flag = {e.flag: e for e in effects}
    # Each failure mode flips one flag, so each flag's "bad" value holds the higher k3 ...
    assert by_flag["logprobs_mode"].high_value == "raw_logprobs" and by_flag["logprobs_mode"].effect > 0.5
    assert by_flag["async_scheduling"].high_value == "True"
    # ... and flags that always change together are reported together, not blamed separately.
    assert by_flag["async_scheduling"].confounded_with == ["flags.pause_generation_for_updates"]
    assert "flags.pause_generation_for_updates" not in by_flag
    # ... while with one run per failure mode no p-value can be small: the test says so honestly.
    assert min(e.p_value for e in effects) > 0.05
    proc = subprocess.run(
        [LOGPROBE, "correlate", "--root", str(root), "--metric", "mismatch/k3", "--format", "csv"]
        + [arg for run in runs for arg in ("--runs", run)],
        capture_output=True,
        text=True,
        check=True,
    )
    lines = proc.stdout.splitlines()
    assert lines[0].startswith('"flag","worst value","effect"') and len(lines) == len(effects) + 1


def test_parity_cli_exit_code_and_html(root: Path, tmp_path: Path) -> None:
    ref, fixed = "demo-torch-reference", "demo-torch-all-fixed"
    ok = logprobe_cli("parity", "--root", root, "--ref", ref, "--run", fixed)
    assert "Verdict: PASS" in ok.stdout
    out = tmp_path / "report.html"
    bad = subprocess.run(
        [
            LOGPROBE,
            "parity",
            "--root",
            str(root),
            "--ref",
            "demo-torch-reference",
            "--run",
            "demo-torch-raw-logprobs",
            "--format",
            "html",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 1 and "Verdict: FAIL" in out.read_text()
    unknown = subprocess.run(
        [LOGPROBE, "parity", "--root", str(root), "--ref", "nope", "--run", "x"],
        capture_output=True,
        text=True,
    )
    assert unknown.returncode == 2 and "no metrics for run 'nope'" in unknown.stderr


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_diagnosis_names_each_scenarios_cause_first(root: Path, scenario: str) -> None:
    """The cause each scenario demonstrates is ranked first, above every other, within 3 steps of
    its onset; the healthy runs get none (``bench/diagnosis.py`` checks more seeds and vLLM)."""
    spec = SCENARIOS[scenario]
    ranked = monitor.diagnose(Store(root), f"demo-torch-{scenario}")
    if spec.cause is None:
        assert ranked == [], [(d.cause, d.confidence, d.evidence) for d in ranked]
        return
    top = ranked[0]
    assert top.cause == spec.cause, [(d.cause, d.confidence) for d in ranked]
    assert all(d.confidence < top.confidence for d in ranked[1:])
    onset = HALF if spec.onset < 0 else spec.onset
    assert top.step_first is not None and top.step_first - onset <= 3


def test_diagnose_cli_json_shape_and_markdown(root: Path) -> None:
    out = subprocess.run(
        [LOGPROBE, "diagnose", "--root", str(root), "--run", "demo-torch-raw-logprobs", "--format", "json"],
        capture_output=True,
        text=True,
        check=True,
    )
    ranked = json.loads(out.stdout)
    assert isinstance(ranked, list) and ranked
    for item in ranked:
        assert {"cause", "confidence", "step_first", "evidence", "fix"} <= set(item)
        assert item["cause"] in monitor.CAUSES and 0 < item["confidence"] <= 1
    assert ranked[0]["cause"] == "logprobs_semantics"
    assert [d["confidence"] for d in ranked] == sorted((d["confidence"] for d in ranked), reverse=True)
    healthy = subprocess.run(
        [LOGPROBE, "diagnose", "--root", str(root), "--run", "demo-torch-reference", "--format", "json"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(healthy.stdout) == []
    md = subprocess.run(
        [LOGPROBE, "diagnose", "--root", str(root), "--run", "demo-torch-stale-weights"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert md.startswith("# demo-torch-stale-weights") and "## stale_weights" in md and "**Fix:**" in md
    missing = subprocess.run(
        [LOGPROBE, "diagnose", "--root", str(root), "--run", "nope"], capture_output=True, text=True
    )
    assert missing.returncode != 0 and "no run 'nope'" in missing.stderr
