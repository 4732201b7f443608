"""Chromium as logprobe's benchmarks and browser tests start it: Debian's ``/usr/bin/chromium``
(Playwright cannot download browsers on these machines), headless, driven by Playwright."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

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


@contextmanager
def chromium() -> Iterator[Any]:
    """A headless Chromium (Playwright's ``Browser``), closed on exit; a RuntimeError naming the
    fix when it is not installed."""
    from playwright.sync_api import sync_playwright  # a test extra (requirements-test.txt)

    if not CHROMIUM.exists():
        raise RuntimeError(f"{CHROMIUM} is missing: `make system` (apt-get install -y chromium) installs it")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            yield browser
        finally:
            browser.close()
