"""The dashboard in a real headless Chromium against a real ``logprobe ui`` server on 127.0.0.1."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from storage import Writer

pytestmark = pytest.mark.browser
playwright = pytest.importorskip(
    "playwright.sync_api", reason="Playwright is a test extra (requirements-test.txt)"
)
CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("store")
    for run_id, k3 in (("healthy-run", 1e-6), ("broken-run", 0.05)):
        with Writer(root) as writer:
            writer.append("runs", run_id, {"name": run_id, "created_at": time.time()})
            writer.append("events", run_id, {"kind": "run_start"})
            writer.append(
                "engines",
                run_id,
                {
                    "engine": "vllm",
                    "vllm_version": "0.32.0",
                    "logprobs_mode": "raw_logprobs" if k3 > 1e-3 else "processed_logprobs",
                    "flags": "{}",
                    "fingerprint": run_id,
                },
            )
            for step in range(40):
                writer.log_metrics(run_id, step, {"mismatch/k3": k3, "reward/mean": step / 40})
            writer.append("events", run_id, {"kind": "run_end"})
    port = _free_port()
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("logprobe")), "ui", "--root", str(root), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.read() == b"ok":
                    break
        except OSError:
            time.sleep(0.3)
    else:
        proc.kill()
        pytest.fail(f"logprobe ui did not come up: {proc.stdout.read()[-2000:]}")
    yield url
    proc.terminate()
    proc.wait(10)


@pytest.fixture
def page(server: str, tmp_path: Path) -> Iterator[object]:
    if not CHROMIUM.exists():
        pytest.fail("Chromium is missing: apt-get install -y chromium (.ci/run installs it)")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(server)
        yield page
        browser.close()


def test_runs_overview_shows_health(page: object) -> None:
    grid = page.locator("[data-testid='stDataFrame']").first
    grid.wait_for(timeout=60_000)
    # The grid draws on a canvas; Glide's accessible table behind it holds the cell text.
    grid_cells = "[data-testid='stDataFrame'] table td, [data-testid='stDataFrame'] [role='gridcell']"
    cells = page.locator(grid_cells)
    cells.first.wait_for(state="attached", timeout=30_000)
    text = " ".join(cells.all_text_contents())
    assert "broken-run" in text and "healthy-run" in text
    assert "bad" in text and "ok" in text and "mismatch/k3 above 0.01" in text


def test_metrics_page_draws_charts(page: object, tmp_path: Path) -> None:
    page.get_by_text("broken-run").first.wait_for(timeout=60_000)
    page.get_by_role("tab", name="Metrics").click()
    page.locator(".js-plotly-plot").first.wait_for(timeout=60_000)
    assert page.locator(".js-plotly-plot").count() >= 2  # k3 and reward by default
    assert page.get_by_text("mismatch/k3").count() >= 1
    page.screenshot(path=str(tmp_path / "metrics.png"))


def test_parity_and_sql_console(page: object) -> None:
    page.get_by_text("broken-run").first.wait_for(timeout=60_000)
    page.get_by_role("tab", name="Parity").click()
    page.get_by_text("Verdict:").first.wait_for(timeout=60_000)
    assert "Verdict: FAIL" in page.content() or "Verdict: PASS" in page.content()
    page.get_by_role("tab", name="SQL").click()
    area = page.get_by_role("textbox", name="SQL")
    area.fill("SELECT 1; SELECT 2")
    page.get_by_role("button", name="Run query").click()
    page.get_by_text("expected exactly one SQL statement").wait_for(timeout=30_000)
    area.fill("SELECT * FROM read_csv('/etc/passwd')")
    page.get_by_role("button", name="Run query").click()
    page.get_by_text("disabled by configuration").first.wait_for(timeout=30_000)
