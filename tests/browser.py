"""Headless Chromium for the tests that render a page (the HTML report, the MLflow UI)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or (
    "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None
)


def require_chromium() -> str:
    """The Chromium executable, or skip the test."""
    if CHROMIUM is None:
        pytest.skip("chromium not installed (apt-get install -y chromium)")
    return CHROMIUM


def render(
    url: str,
    *,
    profile: Path,
    screenshot: Path,
    window: tuple[int, int],
    budget_ms: int,
    timeout: float,
    extra: Sequence[str] = (),
) -> str:
    """Load ``url`` in headless Chromium (a fresh ``profile``, no background traffic of its own
    beyond its calls home), save a ``screenshot`` of ``window`` after ``budget_ms`` of virtual
    time, and return the DOM; a failed launch fails the test."""
    browser = subprocess.run(
        [
            require_chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={profile}",
            *extra,
            f"--virtual-time-budget={budget_ms}",
            f"--window-size={window[0]},{window[1]}",
            "--hide-scrollbars",
            f"--screenshot={screenshot}",
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert browser.returncode == 0, browser.stderr[-2000:]
    return browser.stdout
