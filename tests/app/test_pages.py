"""Every dashboard page through Streamlit's AppTest: empty store, the demo's runs, a corrupt file.

AppTest runs the real script in-process (real widgets, real DuckDB over real Parquet) without a
browser, so page logic is checked quickly on every store shape; the browser tests cover the rest.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from app.dashboard import PAGES
from storage import Writer


def _script(root: str, page: str, rules: str | None = None) -> None:
    from app.dashboard import main

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


def _charts(at: AppTest) -> list[dict]:
    return [json.loads(c.proto.spec) for c in at.get("plotly_chart")]


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
    assert len(table) == 7 and set(table["status"]) == {"finished"}
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
    at = _open(demo_root, "drift")
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
    assert len(at.dataframe[0].value) == 7  # "Mean k3 per run": one row per demo run
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
    import monitor
    from storage import Store

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
