"""Every dashboard page through Streamlit's AppTest: empty store, the demo's runs, a corrupt file,
a store written before the diagnosis's signatures and sequences.

AppTest runs the real script in-process (real widgets, real DuckDB over real Parquet) without a
browser, so page logic is checked quickly on every store shape; the browser tests cover the rest.
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from logprobe import monitor
from logprobe.app.dashboard import PAGES
from logprobe.collectors.demo import SCENARIOS
from logprobe.storage import Store, Writer

DIAGNOSED = ("reference", "raw-logprobs", "stale-weights")  # a healthy run and two causes


def _script(root: str, page: str, rules: str | None = None) -> None:
    from logprobe.app.dashboard import main

    main(root=root, page=page, rules=rules)


def _open(root: Path, page: str, query: dict[str, str] | None = None, rules: Path | None = None) -> AppTest:
    at = AppTest.from_function(
        _script, args=(str(root), page, str(rules) if rules else None), default_timeout=120
    )
    for key, value in (query or {}).items():
        at.query_params[key] = value
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


@pytest.fixture(scope="module")
def corrupt_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("corrupt")
    with Writer(root) as writer:
        writer.append("runs", "ok-run", {"name": "ok-run"})
        for step in range(10):
            writer.log_metrics("ok-run", step, {"mismatch/k3": 1e-6, "reward/mean": 0.5})
    bad = root / "metrics" / "run_id=ok-run" / "zz-torn.parquet"
    bad.write_bytes(b"PAR1 this is not a parquet file")
    return root


@pytest.fixture(scope="module")
def diagnosed_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three real demo scenarios, six steps each (about a minute): enough steps for a cause to show
    and far fewer than the whole demo."""
    from logprobe.collectors.demo import run_demo

    root = tmp_path_factory.mktemp("diagnosed")
    with pytest.MonkeyPatch.context() as patch:  # module scope: before the per-test isolation applies
        patch.setenv("LOGPROBE_DIR", str(root / "default-root"))
        patch.setenv("LOGPROBE_CACHE_DIR", str(root / "cache"))
        run_demo(root, engine="torch", steps=6, scenarios=list(DIAGNOSED))
    return root


def _charts(at: AppTest) -> list[dict]:
    return [json.loads(c.proto.spec) for c in at.get("plotly_chart")]


def _values(data: object) -> np.ndarray:
    """A trace's x or y from a figure's JSON: Plotly sends numpy arrays as typed arrays (base64)."""
    if isinstance(data, dict) and "bdata" in data:
        return np.frombuffer(base64.b64decode(data["bdata"]), dtype=data["dtype"])
    return np.asarray(data, dtype=float)


@pytest.mark.parametrize("page", list(PAGES))
def test_every_page_on_an_empty_store(tmp_path: Path, page: str) -> None:
    at = _open(tmp_path / "nothing-here", page)
    assert any("No runs under" in i.value for i in at.info)


@pytest.mark.parametrize("page", list(PAGES))
def test_every_page_with_a_corrupt_file(corrupt_root: Path, page: str) -> None:
    at = _open(corrupt_root, page)
    if page == "runs":
        assert any("zz-torn.parquet" in w.value for w in at.warning)
    if page == "metrics":
        assert len(_charts(at)) == 2  # k3 and reward; the torn file is skipped, not fatal


@pytest.mark.slow  # the demo runs (trained once per session, about 75 s)
@pytest.mark.parametrize("page", list(PAGES))
def test_every_page_on_the_demo_runs(demo_root: Path, page: str) -> None:
    at = _open(demo_root, page)
    assert at.header[0].value == PAGES[page][0]
    assert not at.error, [e.value for e in at.error]


@pytest.mark.slow  # the demo runs (trained once per session, about 75 s)
def test_runs_page_filters_and_searches(demo_root: Path) -> None:
    at = _open(demo_root, "runs")
    table = at.dataframe[0].value
    assert len(table) == len(SCENARIOS) and set(table["status"]) == {"finished"}
    assert set(table.loc[table["run_id"].str.contains("raw-logprobs"), "health"]) == {"bad"}
    assert set(table.loc[table["run_id"].str.endswith("reference"), "health"]) == {"ok"}
    at.sidebar.text_input[0].input("bf16").run()
    assert list(at.dataframe[0].value["run_id"]) == ["demo-torch-bf16-lm-head"]
    at.sidebar.text_input[0].input("").run()
    at.sidebar.multiselect[0].set_value(["live"]).run()  # status filter: nothing is live
    assert any("No run matches" in i.value for i in at.info)


@pytest.mark.slow  # the demo runs (trained once per session, about 75 s)
def test_metrics_page_draws_findings_markers_thresholds_and_zooms_from_a_link(demo_root: Path) -> None:
    run = "demo-torch-flag-change"
    at = _open(demo_root, "metrics", {"runs": run, "metric": "mismatch/k3", "x0": "7", "x1": "20"})
    assert at.sidebar.multiselect[1].value == [run]
    k3 = next(c for c in _charts(at) if c["layout"]["title"]["text"] == "mismatch/k3")
    shapes = k3["layout"]["shapes"]
    assert k3["layout"]["xaxis"]["range"] == [7, 20]
    assert any(s["type"] == "rect" for s in shapes)  # the finding after the restart is shaded
    assert any(s.get("line", {}).get("dash") == "dash" for s in shapes)  # the config change
    rule_lines = [s for s in shapes if s["type"] == "line" and s["y0"] == s["y1"]]
    assert rule_lines  # the default rules' k3 thresholds
    at.slider[0].set_value(10.0).run()  # smoothing adds a smoothed line above each raw one
    smoothed = next(c for c in _charts(at) if c["layout"]["title"]["text"] == "mismatch/k3")
    assert len(smoothed["data"]) == len(k3["data"]) + 1


@pytest.mark.slow  # the demo runs (trained once per session, about 75 s)
def test_drift_page_lists_findings_newest_first_with_chart_links(demo_root: Path) -> None:
    # Every demo run: the sidebar compares only the first eight by default.
    at = _open(demo_root, "drift", {"runs": ",".join(f"demo-torch-{name}" for name in SCENARIOS)})
    findings = at.dataframe[0].value
    assert {"demo-torch-raw-logprobs", "demo-torch-prefix-cache-no-reset"} <= set(findings["run_id"])
    detected = list(findings["detected at"])
    assert detected == sorted(detected, reverse=True)
    assert all(link.startswith("metrics?runs=") and "x0=" in link for link in findings["chart"])
    assert at.get("page_link")  # the selected finding opens on its chart
    alerts = at.dataframe[1].value  # the demo evaluates the shipped rules inline
    assert "demo-torch-raw-logprobs" in set(alerts.loc[alerts["state"] == "firing", "run_id"])
    assert "demo-torch-reference" not in set(alerts["run_id"])
    rules = at.dataframe[-1].value
    assert "mismatch/k3" in set(rules["metric"])


@pytest.mark.slow  # the demo runs (trained once per session, about 75 s)
def test_flags_page_ranks_flags_and_draws_the_spread(demo_root: Path) -> None:
    at = _open(demo_root, "flags")
    effects = at.dataframe[0].value
    assert "logprobs_mode" in set(effects["flag"])
    (strip,) = _charts(at)
    assert all(trace["type"] == "box" for trace in strip["data"])
    diff = at.dataframe[1].value
    assert len(diff) >= 1  # the first two demo runs differ in at least one flag


@pytest.mark.slow  # the demo runs (trained once per session, about 75 s)
def test_tokens_page_heatmap_and_worst_tokens(demo_root: Path) -> None:
    at = _open(demo_root, "tokens")
    (heatmap,) = _charts(at)
    assert heatmap["data"][0]["type"] == "heatmap"
    worst = at.dataframe[0].value
    ratios = list(worst["log_ratio"].abs())
    assert ratios and ratios == sorted(ratios, reverse=True)
    assert worst["token_text"].notna().all()


@pytest.mark.slow  # the demo runs (trained once per session, about 75 s)
def test_sql_console_runs_examples_and_refuses_escapes(demo_root: Path) -> None:
    at = _open(demo_root, "sql")
    at.button[0].click().run()
    assert len(at.dataframe[0].value) == len(SCENARIOS)  # "Mean k3 per run": one row per demo run
    assert at.get("download_button")
    escapes = {
        "SELECT * FROM read_csv('/etc/passwd')": "disabled by configuration",
        "COPY (SELECT 1) TO '/tmp/x.csv'": "only read-only SELECT",
        "INSTALL httpfs": "only read-only SELECT",
        "LOAD httpfs": "only read-only SELECT",
        "ATTACH '/tmp/other.db'": "only read-only SELECT",
        f"SELECT * FROM read_parquet('{demo_root}/../*/*.parquet')": "",
    }
    for query, message in escapes.items():
        at.text_area[0].input(query).run()
        at.button[0].click().run()
        assert at.error, query
        assert message in at.error[0].value, (query, at.error[0].value)


def test_a_refresh_of_a_live_run_reads_only_its_new_files(tmp_path: Path) -> None:
    """No watcher keeps this run's findings, so the dashboard scans it once, keeps the scan on disk
    (not per browser session) and on every refresh feeds only the files written since."""
    from logprobe import monitor
    from logprobe.storage import Store

    with Writer(tmp_path) as writer:
        writer.append("runs", "live", {"name": "live"})
        for step in range(100):
            writer.log_metrics("live", step, {"mismatch/k3": 1e-5 * (1 + 0.01 * (step % 7))})

    def kept() -> dict:
        (path,) = monitor.findings_cache_dir(Store(tmp_path)).glob("*.json")
        return json.loads(path.read_text())

    at = _open(tmp_path, "runs")
    assert list(at.dataframe[0].value["health"]) == ["ok"]
    assert (kept()["scans"], kept()["updates"], kept()["state"]["points"]) == (1, 1, 100)
    with Writer(tmp_path) as writer:
        for step in range(100, 110):
            writer.log_metrics("live", step, {"mismatch/k3": 0.05})
    at.run()  # the refresh a live run gets
    assert not at.exception
    assert (kept()["scans"], kept()["updates"], kept()["state"]["points"]) == (1, 2, 110)
    assert list(at.dataframe[0].value["health"]) == ["bad"]  # the new steps were judged
    _open(tmp_path, "drift")  # a new browser session: reads the kept scan, scans nothing
    assert (kept()["scans"], kept()["updates"]) == (1, 2)


@pytest.mark.slow  # three demo runs (trained once for this module, about a minute)
def test_runs_page_names_each_runs_top_cause(diagnosed_root: Path) -> None:
    table = _open(diagnosed_root, "runs").dataframe[0].value.set_index("run_id")
    assert table.loc["demo-torch-raw-logprobs", "cause"].startswith("logprobs_semantics (")
    assert table.loc["demo-torch-stale-weights", "cause"].startswith("stale_weights (")
    assert table.loc["demo-torch-reference", "cause"] == ""  # healthy: no cause
    assert all(re.fullmatch(r"[a-z_]+ \([01]\.\d\d\)", c) for c in table["cause"] if c)


@pytest.mark.slow  # three demo runs (trained once for this module, about a minute)
def test_diagnosis_page_ranks_causes_and_draws_their_evidence(diagnosed_root: Path) -> None:
    run = "demo-torch-raw-logprobs"
    at = _open(diagnosed_root, "diagnosis", {"runs": run})
    assert at.header[0].value == "Diagnosis" and at.selectbox[0].value == run
    assert not at.error, [e.value for e in at.error]
    causes = at.dataframe[0].value
    assert causes["cause"].iloc[0] == "logprobs_semantics"
    assert {"title", "confidence", "from step", "evidence", "fix"} <= set(causes.columns)
    assert "slope" in causes["evidence"].iloc[0] and causes["from step"].iloc[0] == 0
    assert any("logprobs\\_semantics" in w.value and "slope" in w.value for w in at.warning)

    level, scatter, position, probability = _charts(at)
    evidence = monitor.load_evidence(Store(diagnosed_root), run)
    shapes = level["layout"]["shapes"]
    assert any(s["y0"] == s["y1"] == pytest.approx(evidence.limit) for s in shapes)  # the threshold
    assert any(s["x0"] == s["x1"] == 0 for s in shapes)  # the top cause's first step
    tokens, identity = scatter["data"]
    x, y = _values(tokens["x"]), _values(tokens["y"])
    assert x.size > 0 and x.size == y.size and np.isfinite(x).all() and (x <= 0).all()
    assert x.size == _values(tokens["marker"]["color"]).size  # coloured by step
    assert list(_values(identity["x"])) == list(_values(identity["y"]))  # the y = x line
    assert np.polyfit(x, y, 1)[0] > 1.2  # raw logprobs at T = 0.7: the cloud's slope is about 1/T
    assert [t["name"] for t in position["data"]] == [
        "1st quarter",
        "2nd quarter",
        "3rd quarter",
        "4th quarter",
    ]
    assert len(probability["data"]) >= 2  # a 6-step run need not sample a token with p >= 0.9

    at.selectbox[0].set_value("demo-torch-stale-weights").run()
    assert not at.exception and at.dataframe[0].value["cause"].iloc[0] == "stale_weights"
    at.selectbox[0].set_value("demo-torch-reference").run()
    assert not at.exception and not at.dataframe
    (healthy,) = at.success
    assert healthy.value.startswith("Healthy") and "above" not in healthy.value
    assert len(_charts(at)) == 4  # the evidence is drawn for a healthy run too


def test_diagnosis_page_on_a_store_without_sequences_or_signatures(tmp_path: Path) -> None:
    """Stores written before signatures and sampled sequences: the page says what is missing and
    draws what there is; a run without the level says there is nothing to diagnose."""
    with Writer(tmp_path) as writer:
        writer.append("runs", "old", {"name": "old"})
        writer.append("runs", "older", {"name": "older"})
        for step in range(12):
            writer.log_metrics("old", step, {"mismatch/abs_logp_diff_mean": 0.05, "mismatch/k3": 1e-3})
            writer.log_metrics("older", step, {"mismatch/k3": 1e-6})
    at = _open(tmp_path, "diagnosis", {"runs": "old"})
    infos = " ".join(i.value for i in at.info)
    assert "no sampled sequences" in infos and "no `signature/*` metrics" in infos
    assert any("No known cause" in w.value for w in at.warning)  # elevated, but no signature to read
    (level,) = _charts(at)
    assert list(_values(level["data"][0]["y"])) == [0.05] * 12
    at.selectbox[0].set_value("older").run()
    assert not at.exception
    assert any("nothing to diagnose" in i.value for i in at.info) and not _charts(at)
    runs = _open(tmp_path, "runs").dataframe[0].value
    assert list(runs["cause"]) == ["", ""]


def test_a_diagnosis_is_recomputed_only_when_its_runs_files_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reruns, new browser sessions and other runs' writes reuse a run's diagnosis; a new file of
    its own diagnoses it again."""
    loads: list[str] = []
    load_evidence = monitor.load_evidence

    def counted(store: object, run_id: str, reference: str | None = None) -> monitor.Evidence:
        loads.append(run_id)
        return load_evidence(store, run_id, reference)

    monkeypatch.setattr(monitor, "load_evidence", counted)
    with Writer(tmp_path) as writer:
        for run in ("a", "b"):
            writer.append("runs", run, {"name": run})
            for step in range(5):
                writer.log_metrics(run, step, {"mismatch/abs_logp_diff_mean": 1e-4})
    at = _open(tmp_path, "runs")
    assert sorted(loads) == ["a", "b"]
    at.run()
    _open(tmp_path, "runs")  # a new browser session
    _open(tmp_path, "diagnosis", {"runs": "a"})
    assert sorted(loads) == ["a", "b"]
    with Writer(tmp_path) as writer:
        writer.log_metrics("b", 5, {"mismatch/abs_logp_diff_mean": 0.2})
    at.run()
    assert not at.exception
    assert sorted(loads) == ["a", "b", "b"]
