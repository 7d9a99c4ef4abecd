"""Signing in and out in Chromium: password, API key, refusal after sign-out."""

from __future__ import annotations

import pytest
from selenium.webdriver.common.by import By

from tests.browser.support import (
    Site,
    WebDriver,
    console_errors,
    screenshot,
    sign_in,
    sign_in_with_key,
    wait_until,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


def test_a_page_sends_a_stranger_to_sign_in_and_back_after_signing_in_with_a_password(
    site: Site, browser: WebDriver
) -> None:
    browser.get(site.page("/ui/keys"))
    wait_until(browser, lambda d: "/ui/sign-in" in d.current_url)
    assert browser.title == "Sign in · jobferry"
    screenshot(browser, "sign-in")
    sign_in(browser, site, site.alice)
    assert browser.current_url == site.page("/ui/keys")
    who = browser.find_element(By.CSS_SELECTOR, ".sign-out .who").text
    assert who == "Signed in as alice"
    assert console_errors(browser) == []


def test_an_admin_signs_in_with_an_api_key_and_sees_the_nodes_link(
    site: Site, browser: WebDriver
) -> None:
    browser.get(site.page("/ui/sign-in"))
    sign_in_with_key(browser, site, site.admin_key)
    assert browser.current_url == site.page("/ui/")
    links = [a.text for a in browser.find_elements(By.CSS_SELECTOR, ".nav-links a")]
    assert links == ["Scripts", "Jobs", "Nodes", "API keys"]


def test_a_wrong_password_is_shown_next_to_the_password_field(
    site: Site, browser: WebDriver
) -> None:
    browser.get(site.page("/ui/sign-in"))
    browser.find_element(By.ID, "username").send_keys("alice")
    browser.find_element(By.ID, "password").send_keys("not her password")
    browser.find_element(By.ID, "sign-in-password").click()
    error = wait_until(browser, lambda d: d.find_elements(By.ID, "password-error"))[0]
    assert error.text == "Invalid email, username or password."
    field = browser.find_element(By.ID, "password")
    assert field.get_attribute("aria-invalid") == "true"
    assert field.get_attribute("aria-describedby") == "password-error"
    assert browser.find_element(By.ID, "username").get_attribute("value") == "alice"


def test_after_signing_out_pages_send_the_browser_back_to_sign_in(
    site: Site, browser: WebDriver
) -> None:
    sign_in(browser, site, site.alice)
    browser.find_element(By.CSS_SELECTOR, ".sign-out button").click()
    wait_until(browser, lambda d: "/ui/sign-in" in d.current_url)
    browser.get(site.page("/ui/"))
    wait_until(browser, lambda d: "/ui/sign-in" in d.current_url)
    assert browser.find_elements(By.CSS_SELECTOR, ".sign-out") == []


def test_an_unknown_page_is_a_404_page_in_the_sites_style(site: Site, browser: WebDriver) -> None:
    sign_in(browser, site, site.alice)
    browser.get(site.page("/ui/no-such-page"))
    assert browser.title == "Page not found · jobferry"
    assert browser.find_element(By.TAG_NAME, "h1").text == "Page not found"
    assert browser.find_element(By.CSS_SELECTOR, ".error-status").text.upper() == "ERROR 404"
    home = browser.find_element(By.LINK_TEXT, "go to the start page")
    screenshot(browser, "not-found")
    home.click()
    wait_until(browser, lambda d: d.current_url == site.page("/ui/"))
    screenshot(browser, "home")
