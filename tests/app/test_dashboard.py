"""The dashboard in a real headless Chromium against a real ``logprobe ui`` server on 127.0.0.1.

Every page is opened on the demo's runs and screenshotted (under the test's tmp dir, and into
``$LOGPROBE_SCREENSHOTS`` when set: ``make screenshots`` regenerates the README's images this way).
A live test appends rows from another process while the Metrics page is open.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench._browser import chromium
from bench._servers import serve_ui
from logprobe.app.dashboard import PAGES
from logprobe.storage import Store, Writer
from tests.conftest import run_python

pytestmark = pytest.mark.browser
pytest.importorskip("playwright.sync_api", reason="Playwright is a test extra (requirements-test.txt)")
EXCEPTION = "[data-testid='stException']"
# What must be on each page of the demo (beyond its heading), as CSS selectors or text.
KEY_ELEMENTS = {
    "runs": ["[data-testid='stDataFrame']"],
    "metrics": [".js-plotly-plot"],
    "drift": ["[data-testid='stDataFrame']", "text=Active rules"],
    "diagnosis": ["text=Evidence", ".js-plotly-plot"],
    "flags": ["[data-testid='stDataFrame']", ".js-plotly-plot"],
    "parity": ["text=Verdict:", "text=Download HTML"],
    "tokens": [".js-plotly-plot", "[data-testid='stDataFrame']"],
    "sql": ["text=Saved queries", "text=Run query"],
}


@pytest.fixture(scope="module")
def demo_server(demo_root: Path) -> Iterator[str]:
    proc, url = serve_ui(demo_root)
    yield url
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with chromium() as browser:
        yield browser


@pytest.fixture
def page(browser: object) -> Iterator[object]:
    page = browser.new_page(viewport={"width": 1500, "height": 1100})
    yield page
    page.close()


def _screenshot(page: object, tmp_path: Path, name: str) -> None:
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    if target := os.environ.get("LOGPROBE_SCREENSHOTS"):
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(target) / path.name)


@pytest.mark.slow  # the demo runs (trained once per session, about 75 s)
@pytest.mark.parametrize("name", list(PAGES))
def test_every_page_on_the_demo_runs(demo_server: str, page: object, tmp_path: Path, name: str) -> None:
    page.goto(f"{demo_server}/{'' if name == 'runs' else name}")  # the default page lives at /
    title = PAGES[name][0]
    page.get_by_role("heading", name=title).first.wait_for(timeout=60_000)
    for selector in KEY_ELEMENTS[name]:
        page.locator(selector).first.wait_for(timeout=60_000)
    if name in ("metrics", "diagnosis"):  # four charts each, drawn one after another
        page.wait_for_function("document.querySelectorAll('.js-plotly-plot').length >= 4", timeout=60_000)
    page.wait_for_timeout(1500)  # let Plotly finish drawing before the screenshot
    assert page.locator(EXCEPTION).count() == 0, page.locator(EXCEPTION).first.inner_text()
    assert page.get_by_text("Page not found").count() == 0
    assert page.get_by_text("Deploy", exact=True).count() == 0  # Streamlit's toolbar in viewer mode
    _screenshot(page, tmp_path, name)


@pytest.mark.slow  # the demo runs (trained once per session, about 75 s)
def test_runs_overview_shows_health_and_reason(demo_server: str, page: object) -> None:
    page.goto(demo_server)
    # The grid draws on a canvas; Glide's accessible table behind it holds the cell text.
    cells = page.locator(
        "[data-testid='stDataFrame'] table td, [data-testid='stDataFrame'] [role='gridcell']"
    )
    cells.first.wait_for(state="attached", timeout=60_000)
    text = " ".join(cells.all_text_contents())
    # Glide renders only the columns in view: scroll right to bring the reason column in.
    page.locator("[data-testid='stDataFrame']").first.hover()
    page.mouse.wheel(3000, 0)
    page.wait_for_timeout(500)
    text += " " + " ".join(cells.all_text_contents())
    assert "demo-torch-raw-logprobs" in text and "demo-torch-reference" in text
    # the reason: a field threshold ("above 0.01") or the reference comparison ("... x the
    # reference run demo-torch-reference's highest level so far")
    assert "bad" in text and "ok" in text and ("above" in text or "the reference run" in text)
    assert "logprobs_semantics (1.00)" in text  # the diagnosis's top cause of raw-logprobs


@pytest.mark.slow  # the demo runs (trained once per session, about 75 s)
def test_a_finding_opens_its_chart_region(demo_server: str, page: object) -> None:
    page.goto(f"{demo_server}/drift")
    link = page.locator("[data-testid='stPageLink'] a").first
    link.wait_for(timeout=60_000)
    link.click()
    page.get_by_role("heading", name="Metrics").wait_for(timeout=60_000)
    page.locator(".js-plotly-plot").first.wait_for(timeout=60_000)
    assert "x0=" in page.url and "metric=" in page.url
    assert page.locator(EXCEPTION).count() == 0


@pytest.mark.slow  # the demo runs (trained once per session, about 75 s)
def test_sql_console_refuses_escapes(demo_server: str, page: object) -> None:
    page.goto(f"{demo_server}/sql")
    area = page.get_by_role("textbox", name="SQL")
    area.wait_for(timeout=60_000)
    for query, message in (
        ("SELECT 1; SELECT 2", "expected exactly one SQL statement"),
        ("SELECT * FROM read_csv('/etc/passwd')", "disabled by configuration"),
        ("ATTACH '/tmp/elsewhere.db'", "only read-only SELECT"),
    ):
        area.fill(query)
        page.get_by_role("button", name="Run query").click()
        page.get_by_text(message).first.wait_for(timeout=30_000)


def test_live_run_updates_without_a_reload(tmp_path: Path, page: object) -> None:
    root = tmp_path / "live"
    with Writer(root) as writer:
        writer.append("runs", "live-run", {"name": "live-run", "created_at": time.time()})
        writer.append("events", "live-run", {"kind": "run_start"})
        for step in range(20):
            writer.log_metrics("live-run", step, {"mismatch/k3": 1e-6, "reward/mean": step / 20})
    proc, url = serve_ui(root)
    try:
        page.goto(f"{url}/metrics")
        page.get_by_text("live-run 19").first.wait_for(timeout=60_000)
        page.locator(".js-plotly-plot").first.wait_for(timeout=60_000)
        run_python(
            "import sys, time; from logprobe.storage import Writer\n"
            "with Writer(sys.argv[1]) as w:\n"
            "    for s in range(20, 57):\n"
            "        w.log_metrics('live-run', s, {'mismatch/k3': 0.2, 'reward/mean': 1.0})\n",
            str(root),
        )
        started = time.monotonic()
        page.get_by_text("live-run 56").first.wait_for(timeout=15_000)  # no reload: the fragment polls
        assert time.monotonic() - started < 15
        assert page.locator(EXCEPTION).count() == 0
        _screenshot(page, tmp_path, "live")
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.slow  # the demo runs, then a replay on the real engine (about a minute)
@pytest.mark.vllm
def test_replay_starts_from_the_diagnosis_page_and_shows_its_verdict(
    demo_root: Path, page: object, tmp_path: Path
) -> None:
    pytest.importorskip("vllm", reason="the vLLM extra is not installed (requirements-vllm.txt)")
    root = tmp_path / "demo"  # a copy: the replay's runs must not join the session's demo store
    shutil.copytree(demo_root, root)
    proc, url = serve_ui(root)
    try:
        page.goto(f"{url}/diagnosis?runs=demo-torch-raw-logprobs")
        page.get_by_role("button", name="Replay this run").click(timeout=60_000)
        page.get_by_text("Replay started").first.wait_for(timeout=60_000)  # the progress bar's text
        page.get_by_text("logprobs_mode = processed_logprobs").first.wait_for(timeout=300_000)
        assert page.locator(EXCEPTION).count() == 0
        page.get_by_role("heading", name="Replay").scroll_into_view_if_needed()
        page.wait_for_timeout(1500)
        _screenshot(page, tmp_path, "replay")
    finally:
        proc.terminate()
        proc.wait(10)
    runs = Store(root).sql("SELECT count(*) FROM runs WHERE source = 'replay'")[0][0].as_py()
    assert runs >= 5  # recorded + four variants, each a run
