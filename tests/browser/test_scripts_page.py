"""The scripts pages in Chromium: find a script by searching the catalogue, fill
its generated form (a file upload, a choice, a number, a flag, several values),
submit, land on the job's page; the job ran with those arguments and those
bytes (checked through the JSON API). Then rerun: the form comes back filled in,
the file kept without uploading it again."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from urllib.parse import quote

import pytest
from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import Select

from tests.browser.support import (
    SCRIPTS,
    Site,
    WebDriver,
    console_errors,
    open_script,
    screenshot,
    sign_in,
    wait_until,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


def page_errors(browser: WebDriver) -> list[str]:
    """Console errors other than statuses the test caused (the refused form's 400; the
    job page, built in another area, may answer 404 here): CSP refusals, script errors."""
    return [e for e in console_errors(browser) if "Failed to load resource" not in e]


def param(browser: WebDriver, dest: str) -> WebElement:
    """The input of the parameter *dest* (its first input: a file field's keep box
    comes before its picker, so files are found by type)."""
    box = browser.find_element(By.CSS_SELECTOR, f'.param[data-param="{dest}"]')
    return box.find_element(By.CSS_SELECTOR, "input:not([type=checkbox]), select, textarea")


def test_find_a_script_fill_its_form_submit_and_rerun(
    site: Site, demo: str, browser: WebDriver, tmp_path: Path
) -> None:
    sign_in(browser, site, site.alice)
    browser.get(site.page("/ui/scripts"))
    assert browser.title == "Scripts · jobferry"
    screenshot(browser, "scripts")
    open_script(browser, "styler", "line styler", demo)

    # The generated form: defaults filled in, one input per parameter.
    assert param(browser, "times").get_attribute("value") == "2"
    assert Select(param(browser, "color")).first_selected_option.text == "green"
    data = tmp_path / "numbers.csv"
    data.write_bytes(b"a,b\n1,2\n")
    param(browser, "data").send_keys(str(data))
    Select(param(browser, "color")).select_by_visible_text("red")
    times = param(browser, "times")
    times.clear()
    times.send_keys("4")
    param(browser, "words").send_keys("alpha\nbeta gamma")
    browser.find_element(By.CSS_SELECTOR, '.param[data-param="shout"] input').click()
    # Two options of one mutually exclusive group: marked at once (scripts.js).
    browser.find_element(By.CSS_SELECTOR, '.param[data-param="json"] input').click()
    browser.find_element(By.CSS_SELECTOR, '.param[data-param="csv"] input').click()
    wait_until(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".param.mutex-conflict"))
    name = browser.find_element(By.ID, "job_name")
    name.clear()
    name.send_keys("from the browser")
    screenshot(browser, "script-form")
    browser.find_element(By.ID, "submit-job").click()

    # The server refuses the pair, next to both fields; the rest is kept.
    wait_until(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".field-error"))
    errors = browser.find_elements(By.CSS_SELECTOR, ".param.has-error")
    assert sorted(e.get_attribute("data-param") for e in errors) == ["csv", "json"]
    assert "choose them again" in browser.find_element(By.ID, "form-errors").text
    assert param(browser, "times").get_attribute("value") == "4"
    browser.find_element(By.CSS_SELECTOR, '.param[data-param="csv"] input').click()
    param(browser, "data").send_keys(str(data))  # files are chosen again
    browser.find_element(By.ID, "submit-job").click()

    wait_until(browser, lambda d: "/ui/jobs/" in d.current_url)
    job_id = browser.current_url.rsplit("/ui/jobs/", 1)[1]
    client = site.daemon.client()
    details = client.wait(job_id)
    assert details["status"] == "completed", details
    assert details["job_name"] == "from the browser"
    ran = json.loads(details["stdout"])
    assert ran["data"] == "a,b\n1,2\n"
    assert (ran["times"], ran["color"], ran["shout"]) == (4, "red", True)
    assert ran["words"] == ["alpha", "beta gamma"]
    assert (ran["json"], ran["csv"]) == (True, False)

    # Rerun: the same form filled in with that job's values, its file kept.
    browser.get(site.page(f"/ui/scripts/{demo}?rerun={job_id}"))
    wait_until(browser, lambda d: d.find_elements(By.ID, "rerun-notice"))
    assert param(browser, "times").get_attribute("value") == "4"
    assert Select(param(browser, "color")).first_selected_option.text == "red"
    assert browser.find_element(By.CSS_SELECTOR, '.param[data-param="shout"] input').is_selected()
    assert param(browser, "words").get_attribute("value") == "alpha\nbeta gamma"
    keep = browser.find_element(By.CSS_SELECTOR, '.param[data-param="data"] .keep input')
    assert keep.is_selected()
    assert "numbers.csv" in browser.find_element(By.CSS_SELECTOR, ".keep label").text
    screenshot(browser, "script-rerun")
    times = param(browser, "times")
    times.clear()
    times.send_keys("5")
    browser.find_element(By.ID, "submit-job").click()
    wait_until(browser, lambda d: "/ui/jobs/" in d.current_url and job_id not in d.current_url)
    rerun = client.wait(browser.current_url.rsplit("/ui/jobs/", 1)[1])
    again = json.loads(rerun["stdout"])
    assert again["data"] == "a,b\n1,2\n" and again["times"] == 5 and again["color"] == "red"
    assert page_errors(browser) == []


def test_the_form_works_with_the_keyboard_and_has_a_label_for_every_input(
    site: Site, demo: str, browser: WebDriver
) -> None:
    sign_in(browser, site, site.alice)
    browser.get(site.page(f"/ui/scripts/{demo}"))
    inputs = browser.find_elements(
        By.CSS_SELECTOR,
        "#script-form input:not([type=hidden]), #script-form select, #script-form textarea",
    )
    assert inputs
    for element in inputs:
        ident = element.get_attribute("id")
        assert browser.find_elements(By.CSS_SELECTOR, f'label[for="{ident}"]'), ident
    assert console_errors(browser) == []


def test_hostile_names_on_the_scripts_pages_run_no_script(
    site: Site, demo: str, browser: WebDriver
) -> None:
    client = site.daemon.client()
    hostile = '"><img src=x onerror=alert(1)><script>alert(2)</script>'
    slug = client.add_script(
        "hostile <b>script</b>", SCRIPTS / "form_demo.py", group=hostile, description=hostile
    )["slug"]
    job_id = client.submit(
        slug,
        f"--label {shlex.quote(hostile)} -- data",
        files={"data": (hostile + ".txt", b"x")},
        job_name=hostile,
        job_description=hostile,
    )
    client.wait(job_id)
    sign_in(browser, site, site.admin)
    for path in (
        "/ui/scripts",
        "/ui/scripts?q=" + quote(hostile),
        f"/ui/scripts/{slug}?rerun={job_id}",
    ):
        browser.get(site.page(path))
        wait_until(browser, lambda d: d.find_elements(By.ID, "main"))
        with pytest.raises(NoAlertPresentException):
            browser.switch_to.alert.text  # noqa: B018 - raises when no alert opened
        assert browser.find_elements(By.CSS_SELECTOR, "img[src=x], main script") == []
    assert browser.find_element(By.ID, "job_name").get_attribute("value") == hostile
    assert param(browser, "label").get_attribute("value") == hostile
    assert page_errors(browser) == []
