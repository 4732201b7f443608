"""What a replay reads from the store, on the torch demo's runs (no engine needed): the settings in
force at a step, the checkpoints and the batch before, the candidate changes, and the errors that
say what is missing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from logprobe import collectors
from logprobe.collectors.replay import Plan, ReplayError, Settings, Variant, candidate_changes, plan_replay
from logprobe.collectors.replay._replay import Target, _removed, _target, _verdict, plan_pairs
from logprobe.storage import Store


def _plan(root: Path, run: str, **kw: object) -> Plan:
    with Store(root) as store:
        return plan_replay(store, run, **kw)


@pytest.mark.slow  # the demo runs (trained once per session)
def test_recorded_settings_and_weights_of_the_latest_replayable_step(demo_root: Path) -> None:
    plan = _plan(demo_root, "demo-torch-prefix-cache-no-reset")
    [step] = plan.steps
    # 24 steps, checkpoints every 4 versions: step 20 ran on v20. With no reset, the prefix cache
    # may still hold KV from the weights the engine started on: the batch before runs on v0.
    assert (step.step, step.version) == (20, 20)
    assert step.checkpoint.name == "policy-v20" and step.prime.name == "policy-v0"
    assert len(step.sequences) == 16 and all(len(q.token_ids) == 8 for q in step.sequences)
    s = step.settings
    assert (s.enable_prefix_caching, s.reset_prefix_cache) == (True, False)
    assert s.logprobs_mode == "processed_logprobs"
    assert (s.temperature, s.top_p, s.dtype, s.head_dtype) == (0.7, 1.0, "float32", "float32")
    assert plan.reference == "demo-torch-reference"
    assert candidate_changes(s)["prefix_cache_reset"] == {"reset_prefix_cache": True}


@pytest.mark.slow
def test_each_fault_has_its_candidate(demo_root: Path) -> None:
    raw = _plan(demo_root, "demo-torch-raw-logprobs").steps[0].settings
    assert candidate_changes(raw)["logprobs_mode"] == {"logprobs_mode": "processed_logprobs"}
    bf16 = _plan(demo_root, "demo-torch-bf16-lm-head").steps[0].settings
    assert candidate_changes(bf16)["head_dtype"] == {"head_dtype": "float32"}
    top_p = _plan(demo_root, "demo-torch-top-p-truncation").steps[0].settings
    assert top_p.top_p == 0.8 and candidate_changes(top_p)["sampling"] == {"top_p": 1.0, "top_k": -1}
    # Rollouts two versions behind: the latest step whose weights were saved is 22 (v20).
    lag = _plan(demo_root, "demo-torch-policy-lag").steps[0]
    assert (lag.step, lag.version) == (22, 20)
    # A flag change half-way: the settings are those in force at the replayed step.
    before = _plan(demo_root, "demo-torch-flag-change", steps=[4]).steps[0].settings
    after = _plan(demo_root, "demo-torch-flag-change", steps=[20]).steps[0]
    assert (before.logprobs_mode, after.settings.logprobs_mode) == ("processed_logprobs", "raw_logprobs")
    assert after.prime.name == "policy-v12"  # the restarted engine began on the weights of step 12


def test_only_updates_that_reached_the_rollouts_count() -> None:
    """A trainer step publishes the next version after its rollouts, under the same step number: at
    step 8 (rollouts on v8) the update to v9, reset or not, says nothing about them. Events of one
    step come back in no fixed order, so the rule cannot lean on their order."""
    import json

    from logprobe.collectors.replay._plan import _settings_at

    engines = [
        {
            "step_first": 0,
            "flags": "{}",
            "dtype": "bfloat16",
            "lm_head_dtype": "float32",
            "logprobs_mode": "processed_logprobs",
            "enable_prefix_caching": True,
            "enforce_eager": True,
            "async_scheduling": False,
            "seed": 0,
        }
    ]

    def update(version: int, reset: bool | None) -> dict:
        payload = {"prefix_caching": True, "prefix_cache_reset": reset, "weight_version": version}
        return {"step": 8, "kind": "weight_update", "payload": json.dumps(payload)}

    for later in (None, True):
        for events in ([update(8, False), update(9, later)], [update(9, later), update(8, False)]):
            assert _settings_at(engines, events, 8, 8).reset_prefix_cache is False, (later, events)
    # No evidence at all: the engine's default, a reset.
    assert _settings_at(engines, [update(8, None)], 8, 8).reset_prefix_cache is True


def test_default_candidates_fill_to_five_and_unknown_ones_are_named() -> None:
    healthy = Settings(logprobs_mode="processed_logprobs", dtype="bfloat16", head_dtype="float32")
    assert list(candidate_changes(healthy)) == ["logprobs_mode", "head_dtype", "batch", "prefix_caching"]
    cached = Settings(enable_prefix_caching=True, reset_prefix_cache=False)
    assert len(candidate_changes(cached)) == 5
    assert list(candidate_changes(healthy, ["enforce_eager"])) == ["enforce_eager"]
    with pytest.raises(ReplayError, match="unknown --vary warp_drive"):
        candidate_changes(healthy, ["warp_drive"])


@pytest.mark.slow
def test_what_is_missing_is_named(demo_root: Path, tmp_path: Path) -> None:
    with pytest.raises(ReplayError, match="no run 'nope'"):
        _plan(demo_root, "nope")
    with pytest.raises(ReplayError, match="policy version 3, which has no checkpoint"):
        _plan(demo_root, "demo-torch-reference", steps=[3])
    with pytest.raises(ReplayError, match="no sequences at step"):
        _plan(demo_root, "demo-torch-reference", steps=[999])
    # A run that logged mismatch without prompts: nothing to re-score.
    run = collectors.init(run_id="bare", root=tmp_path)
    run.log_mismatch(0, torch.zeros(2, 4), torch.zeros(2, 4))
    run.close()
    with pytest.raises(ReplayError, match="logged no sequences"):
        _plan(tmp_path, "bare")
    # With --model, steps need no checkpoint events (one folder for all).
    plan = _plan(demo_root, "demo-torch-reference", steps=[3], model=tmp_path)
    assert plan.steps[0].checkpoint == tmp_path and plan.notes


def _v(name: str, level: float, changes: dict | None = None, **kw: object) -> Variant:
    v = Variant(name, changes if changes is not None else {name: True}, Settings(), **kw)
    v.metrics = {"mismatch/abs_logp_diff_mean": level}
    return v


def test_verdict_takes_the_fewest_most_specific_changes_that_reach_the_level() -> None:
    base, floor = _v("recorded", 0.01, {}), Target("floor", 0.001)
    # At the floor already (paired, within 1.1x): nothing to change, whatever the variants do.
    assert _verdict(_v("recorded", 0.00105, {}), [_v("batch", 0.0001)], floor).changes == {}
    # A reference run's replay scores other tokens: 1.5x of it still counts as its level.
    assert _verdict(_v("recorded", 0.0014, {}), [], Target("reference", 0.001)).changes == {}
    assert _verdict(_v("recorded", 0.0014, {}), [], floor).changes is None
    # Two changes reach it: the earlier candidate wins a tie (a reset before turning caching off),
    # even when the later one lands a little lower.
    reset = _v("prefix_cache_reset", 0.00105, {"reset_prefix_cache": True})
    off = _v("prefix_caching", 0.001, {"enable_prefix_caching": False})
    assert _verdict(base, [off, reset], floor).changes == {"reset_prefix_cache": True}
    # A setting the engine refused is never the answer.
    refused = _v("async_scheduling", 0.001, refused=["async_scheduling"])
    verdict = _verdict(base, [refused, _v("batch", 0.009)], floor)
    assert verdict.changes is None and "outside the varied settings" in verdict.message
    # Below 1e-6 nats, fp32 rounding: 2.4e-7 against a 1.6e-7 floor is the same level.
    assert _verdict(_v("recorded", 2.4e-7, {}), [], Target("floor", 1.6e-7)).changes == {}


def test_the_level_to_reach() -> None:
    single, batched = _v("floor", 9.3e-5, {}), _v("floor_batched", 8.6e-5, {})
    # The floor is the higher of one-at-a-time and batched: batch composition moves bf16 results.
    assert _target([single, batched], None) == Target("floor", 9.3e-5)
    # A reference run above the floor is the target; below it, this run's own floor is.
    assert _target([single, batched], _v("reference", 2e-4, {})) == Target("reference", 2e-4)
    assert _target([single, batched], _v("reference", 3e-5, {})) == Target("floor", 9.3e-5)
    failed = _v("floor", float("nan"), {}, error="start: boom")
    assert _target([failed], None).error == "start: boom"


def test_removed_share_and_pairs_when_no_single_change_is_enough() -> None:
    floor = Target("floor", 0.001)
    assert _removed(0.01, 0.001, floor) == 1.0 and _removed(0.01, 0.0055, floor) == 0.5
    assert _removed(0.01, 0.02, floor) < 0 and _removed(0.00105, 0.0001, floor) is None
    a, b, c = _v("logprobs_mode", 0.006), _v("head_dtype", 0.004), _v("batch", 0.0099)
    for v in (a, b, c):
        v.removed = _removed(0.01, v.level, floor)
    pairs = plan_pairs([a, b, c], Settings(), floor)
    assert [p.name for p in pairs] == ["head_dtype+logprobs_mode"]  # batch removed 1%: not paired
    assert pairs[0].changes == {"head_dtype": True, "logprobs_mode": True}
    assert plan_pairs([a, _v("sampling", 0.00105)], Settings(), floor) == []  # one single suffices
    # Two faults whose errors partly cancel: fixing one alone is worse, and still half of the fix.
    worse = _v("prefix_cache_reset", 0.0112, {"reset_prefix_cache": True})
    hurts_too = _v("prefix_caching", 0.0112, {"enable_prefix_caching": False})
    for v in (worse, hurts_too):
        v.removed = _removed(0.01, v.level, floor)
    pairs = plan_pairs([a, worse, hurts_too, c], Settings(), floor)
    assert [p.name for p in pairs] == ["logprobs_mode+prefix_cache_reset", "logprobs_mode+prefix_caching"]


@pytest.mark.slow
def test_steps_under_different_settings_are_refused_together(demo_root: Path) -> None:
    from logprobe.collectors.replay import replay

    with pytest.raises(ReplayError, match="ran under different engine settings"):
        replay(demo_root, "demo-torch-flag-change", steps=[4, 20], write=False)
