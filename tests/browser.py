"""A real headless browser for end-to-end tests of pages: Debian's Chromium driven by Playwright.

Playwright's own browser download needs the internet; the system's Chromium
(``apt-get install chromium``) is used instead. Tests take the ``browser_page`` fixture
(tests/conftest.py); they are skipped only when no Chromium is installed.
"""

from __future__ import annotations

import os
import shutil

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def chromium_path() -> str | None:
    """``GAUGAN_CHROMIUM`` if set, else the first Chromium on PATH."""
    configured = os.environ.get("GAUGAN_CHROMIUM")
    if configured:
        return configured
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None
