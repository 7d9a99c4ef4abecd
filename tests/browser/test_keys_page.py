"""The "My API keys" page in Chromium: create (shown once), list with last use, revoke;
and ``jobferry user logout-all`` signing a browser out."""

from __future__ import annotations

import pytest
import requests
from selenium.webdriver.common.by import By

from tests.browser.support import (
    Site,
    WebDriver,
    console_errors,
    screenshot,
    sign_in,
    wait_until,
)
from tests.helpers import DEADLINE_S

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


def key_row(browser: WebDriver, name: str) -> object:
    rows = browser.find_elements(By.CSS_SELECTOR, "table.keys tbody tr")
    found = [r for r in rows if r.find_element(By.CSS_SELECTOR, ".key-name").text == name]
    assert len(found) == 1, [r.text for r in rows]
    return found[0]


def test_create_a_key_use_it_see_its_last_use_and_revoke_it(site: Site, browser: WebDriver) -> None:
    sign_in(browser, site, site.alice)
    browser.get(site.page("/ui/keys"))
    assert browser.title == "API keys · jobferry"
    browser.find_element(By.ID, "key-name").send_keys("nightly pipeline")
    browser.find_element(By.ID, "create-key").click()
    shown = wait_until(browser, lambda d: d.find_elements(By.ID, "new-key-value"))[0]
    key = shown.get_attribute("value")
    assert key and key.startswith("jf_")
    screenshot(browser, "keys-new")

    # The key works against the API; the page then shows when it was last used.
    api = requests.get(
        site.page("/api/whoami"),
        headers={"x-api-key": key},
        timeout=DEADLINE_S,
    )
    assert api.status_code == 200, api.text
    browser.get(site.page("/ui/keys"))
    assert key not in browser.page_source  # shown once only
    row = key_row(browser, "nightly pipeline")
    assert row.find_element(By.CSS_SELECTOR, ".last-used time").text.endswith("UTC")  # type: ignore[attr-defined]
    screenshot(browser, "keys")

    row.find_element(By.CSS_SELECTOR, "button.revoke").click()  # type: ignore[attr-defined]
    wait_until(browser, lambda d: "revoked=1" in d.current_url)
    assert "The key was revoked." in browser.find_element(By.CSS_SELECTOR, ".notice").text
    row = key_row(browser, "nightly pipeline")
    assert row.find_element(By.CSS_SELECTOR, ".badge").text == "revoked"  # type: ignore[attr-defined]
    assert row.find_elements(By.CSS_SELECTOR, "button.revoke") == []  # type: ignore[attr-defined]
    refused = requests.get(
        site.page("/api/whoami"),
        headers={"x-api-key": key},
        timeout=DEADLINE_S,
    )
    assert refused.status_code == 401  # the Galaxy face's answer to a revoked key
    assert console_errors(browser) == []


def test_the_keyboard_reaches_the_skip_link_first_and_it_jumps_to_the_content(
    site: Site, browser: WebDriver
) -> None:
    sign_in(browser, site, site.alice)
    browser.get(site.page("/ui/keys"))
    browser.find_element(By.TAG_NAME, "body").send_keys("\t")
    focused = browser.switch_to.active_element
    assert focused.get_attribute("class") == "skip-link" and focused.text == "Skip to content"
    focused.send_keys("\n")
    wait_until(browser, lambda d: d.current_url.endswith("#main"))


def test_logout_all_signs_every_browser_of_the_user_out(site: Site, browser: WebDriver) -> None:
    sign_in(browser, site, site.alice)
    browser.get(site.page("/ui/keys"))
    assert browser.title == "API keys · jobferry"
    done = site.daemon.cli("user", "logout-all", "alice", "--json")
    assert '"sessions_ended"' in done.stdout
    browser.get(site.page("/ui/keys"))
    wait_until(browser, lambda d: "/ui/sign-in" in d.current_url)
    assert browser.find_elements(By.CSS_SELECTOR, ".sign-out") == []
