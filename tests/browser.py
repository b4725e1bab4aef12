"""A real headless browser for tests: Debian's chromium driven by Playwright's Python package.

Use from a test module: ``from tests.browser import browser_page  # noqa: F401`` and take the
``browser_page`` fixture (a fresh Playwright ``Page``; every request it makes is recorded in
``page.requests``). Needs the ``playwright`` Python package (not its downloaded browsers:
``playwright install`` is never run) and a chromium binary: ``$CHROMIUM``, else ``chromium`` or
``chromium-browser`` on PATH (Debian: ``apt-get install -y chromium``). Without the binary the
test is skipped, saying so; a missing Python package is an error.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest


def chromium_path() -> str | None:
    candidates = [os.environ.get("CHROMIUM"), shutil.which("chromium"), shutil.which("chromium-browser")]
    return next((path for path in candidates if path and os.access(path, os.X_OK)), None)


@pytest.fixture
def browser_page() -> Iterator[object]:
    executable = chromium_path()
    if executable is None:
        pytest.skip("no chromium binary ($CHROMIUM, chromium or chromium-browser on PATH): "
                    "apt-get install -y chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        # --no-sandbox: the tests may run as root in a container, where chromium's sandbox refuses to start.
        browser = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.requests = []
            page.on("request", lambda request: page.requests.append(request.url))
            yield page
        finally:
            browser.close()
