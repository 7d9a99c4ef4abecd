"""Fixtures of the browser tests (the helpers they use are in ``support.py``).

- ``site`` (per module): a running daemon with an admin and ``alice``, both with
  passwords (``support.Site``).
- ``demo`` (per module): the slug of form_demo.py, registered as "line styler" in
  group "Text" (and another script elsewhere).
- ``browser`` (per test): a fresh headless Chromium with its own profile; skipped
  without Debian's chromium/chromedriver, failed instead when ``CI=true``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.browser.support import (
    Site,
    WebDriver,
    add_demo_scripts,
    new_browser,
    require_browser,
    running_site,
)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """A daemon shared by the tests of one module (stopped after the last)."""
    with running_site(tmp_path_factory.mktemp("web") / "data") as made:
        yield made


@pytest.fixture(scope="module")
def demo(site: Site) -> str:
    """The slug of form_demo.py, registered in group "Text" (and another script elsewhere)."""
    return add_demo_scripts(site, "line styler")


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    """A fresh headless Chromium for one test (quit at its end)."""
    require_browser()
    profile = tmp_path / f"chromium-{uuid.uuid4().hex[:8]}"
    profile.mkdir()
    driver = new_browser(profile)
    try:
        yield driver
    finally:
        driver.quit()
