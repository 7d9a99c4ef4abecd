"""The nodes page in Chromium: an admin drains and undrains this node (by mouse and by
keyboard) and sees its state change; a user who is not an admin is refused."""

from __future__ import annotations

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webelement import WebElement

from tests.browser.support import (
    Site,
    WebDriver,
    console_errors,
    screenshot,
    sign_in,
    wait_until,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


def this_node(site: Site) -> str:
    nodes = site.daemon.client().get("/api/nodes").json()
    assert len(nodes) == 1, nodes
    return str(nodes[0]["name"])


def node_row(browser: WebDriver, name: str) -> WebElement:
    rows = browser.find_elements(By.CSS_SELECTOR, "#node-list tbody tr.node")
    found = [r for r in rows if r.get_attribute("data-node") == name]
    assert len(found) == 1, [r.text for r in rows]
    return found[0]


def state_of(browser: WebDriver, name: str) -> str:
    return node_row(browser, name).find_element(By.CSS_SELECTOR, ".node-state .badge").text


def test_an_admin_drains_and_undrains_this_node_and_sees_its_state_change(
    site: Site, browser: WebDriver
) -> None:
    name = this_node(site)
    sign_in(browser, site, site.admin)
    browser.find_element(By.LINK_TEXT, "Nodes").click()
    wait_until(browser, lambda d: d.current_url == site.page("/ui/nodes"))
    assert browser.title == "Nodes · jobferry"
    row = node_row(browser, name)
    assert state_of(browser, name) == "up"
    cores = row.find_element(By.CSS_SELECTOR, ".cores").text
    assert " / " in cores and all(part.isdigit() for part in cores.split(" / "))
    assert row.find_element(By.CSS_SELECTOR, ".running").text == "0"
    assert row.find_element(By.CSS_SELECTOR, ".heartbeat time").text.endswith(" ago")
    screenshot(browser, "nodes")

    row.find_element(By.CSS_SELECTOR, "button.drain").click()
    wait_until(browser, lambda d: "drained=" in d.current_url)
    assert browser.find_element(By.ID, "nodes-notice").text == f"Node {name} drained."
    assert state_of(browser, name) == "draining"
    assert site.daemon.client().get(f"/api/nodes/{name}").json()["drained"] is True
    screenshot(browser, "nodes-drained")

    # Undrain with the keyboard: focus the button, press Enter.
    button = node_row(browser, name).find_element(By.CSS_SELECTOR, "button.undrain")
    assert button.get_attribute("aria-label") == f"Undrain node {name}"
    browser.execute_script("arguments[0].focus()", button)
    browser.switch_to.active_element.send_keys(Keys.ENTER)
    wait_until(browser, lambda d: "undrained=" in d.current_url)
    assert browser.find_element(By.ID, "nodes-notice").text == f"Node {name} undrained."
    assert state_of(browser, name) == "up"
    assert site.daemon.client().get(f"/api/nodes/{name}").json()["drained"] is False
    assert console_errors(browser) == []


def test_a_user_who_is_not_an_admin_is_refused_the_nodes_page(
    site: Site, browser: WebDriver
) -> None:
    sign_in(browser, site, site.alice)
    links = [a.text for a in browser.find_elements(By.CSS_SELECTOR, ".nav-links a")]
    assert "Nodes" not in links
    browser.get(site.page("/ui/nodes"))
    assert browser.title == "Not allowed · jobferry"
    assert browser.find_element(By.CSS_SELECTOR, ".error-status").text.upper() == "ERROR 403"
    assert browser.find_elements(By.ID, "node-list") == []
    screenshot(browser, "nodes-refused")
    # The one console error is the page's own 403 (no CSP refusal, nothing else).
    assert [e for e in console_errors(browser) if "status of 403" not in e] == []
