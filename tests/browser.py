"""Render a report in Debian's headless Chromium (`make test` installs it), as the report tests do."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path


def screenshot(page: Path, png: Path, *, height: int = 2000) -> Path:
    """Render `page` offline into `png` (1280 × height) and return it; fails if Chromium is missing or fails."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    assert browser, "chromium is missing: apt-get install -y chromium (make test does)"
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [
                browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
                f"--window-size=1280,{height}", f"--screenshot={png}", page.as_uri(),
            ],
            capture_output=True,
            timeout=120,
            check=True,
        )  # fmt: skip
    return png
