"""The job list and a job's page in Chromium: a job followed live (a stdout line shown
while it runs, then completed), an asset downloaded and compared, a long job
cancelled to REVOKED, the list's filters, paging and live refresh. Screenshots of
both pages (and, with JOBFERRY_README_SCREENSHOT=1, ``docs/job-page.png`` for the
README)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

from tests.browser.support import (
    Site,
    WebDriver,
    console_errors,
    job_page_final,
    screenshot,
    sign_in,
    wait_until,
)
from tests.helpers import ROOT

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

DEMO = ROOT / "tests" / "data" / "jobs" / "page_demo.py"
SLEEPER = ROOT / "tests" / "data" / "jobs" / "sleeper.py"
README_SHOT = ROOT / "docs" / "job-page.png"
#: Set to refresh README_SHOT from this run (the test leaves the tree clean otherwise).
README_SHOT_ENV = "JOBFERRY_README_SCREENSHOT"


@pytest.fixture(scope="module")
def alice_key(site: Site) -> str:
    client = site.daemon.client()
    client.add_script("pagedemo", DEMO)
    client.add_script("sleeper", SLEEPER)
    return site.daemon.cli("key", "create", "alice").stdout.strip()


def state_of(browser: WebDriver) -> str:
    return str(browser.find_element(By.ID, "job-state").text)


def test_a_job_page_shows_stdout_while_the_job_runs_then_completes(
    site: Site, browser: WebDriver, alice_key: str, tmp_path: Path
) -> None:
    go = tmp_path / "go"
    client = site.daemon.client(alice_key)
    job_id = client.submit("pagedemo", f"--go {go} --rows 12", job_name="Follow me live")
    sign_in(browser, site, site.alice)
    browser.get(site.page(f"/ui/jobs/{job_id}"))
    assert browser.title == "Job Follow me live · jobferry"
    assert state_of(browser) in ("queued", "submitted", "running")
    # The first line arrives while the job waits for the file only this test creates.
    wait_until(browser, lambda d: "first line" in d.find_element(By.ID, "stdout").text)
    assert "go-ahead seen" not in browser.find_element(By.ID, "stdout").text
    wait_until(browser, lambda d: state_of(d) == "running")
    assert not go.exists()
    # Escaped: the HTML the job printed is text, nothing ran and nothing was injected.
    assert "<script>alert(1)</script>" in browser.find_element(By.ID, "stdout").text
    assert browser.find_elements(By.CSS_SELECTOR, "#stdout b, #stdout script") == []
    go.write_text("go")
    wait_until(browser, lambda d: state_of(d) == "completed" and job_page_final(d))
    wait_until(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".preview-image img"))
    assert "done" in browser.find_element(By.ID, "stdout").text
    assert browser.find_element(By.ID, "job-exit-code").text == "0"
    image = browser.find_element(By.CSS_SELECTOR, ".preview-image img")
    wait_until(browser, lambda d: d.execute_script("return arguments[0].naturalWidth", image))
    assert browser.execute_script("return arguments[0].naturalWidth", image) == 64
    cells = browser.find_elements(By.CSS_SELECTOR, ".preview-csv td")
    assert "<i>3</i>" in [c.text for c in cells]
    assert console_errors(browser) == []
    shot = screenshot(browser, "job-page")
    assert shot.stat().st_size > 0
    if os.environ.get(README_SHOT_ENV):  # refresh the README's picture (else left alone)
        browser.set_window_size(1100, 1500)
        browser.execute_script("window.scrollTo(0, 0)")
        assert browser.save_screenshot(str(tmp_path / "readme.png"))
        shutil.copyfile(tmp_path / "readme.png", README_SHOT)


def test_an_asset_downloads_with_the_same_bytes(
    site: Site, browser: WebDriver, alice_key: str, tmp_path: Path
) -> None:
    client = site.daemon.client(alice_key)
    details = client.wait(client.submit("pagedemo", "--rows 40", job_name="download me"))
    asset = next(a for a in details["assets"] if a["name"] == "result.csv")
    expected = client.get(asset["url"].replace(site.url, "")).content
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    browser.execute_cdp_cmd(
        "Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)}
    )
    sign_in(browser, site, site.alice)
    browser.get(site.page(f"/ui/jobs/{details['job_id']}"))
    link = browser.find_element(By.CSS_SELECTOR, 'a.download[aria-label="Download result.csv"]')
    link.click()
    saved = downloads / "result.csv"
    wait_until(browser, lambda d: saved.exists() and saved.stat().st_size == len(expected))
    assert saved.read_bytes() == expected
    assert console_errors(browser) == []


def test_cancel_a_long_job_and_see_it_revoked(
    site: Site, browser: WebDriver, alice_key: str
) -> None:
    client = site.daemon.client(alice_key)
    job_id = client.submit("sleeper", "300", job_name="too long")
    sign_in(browser, site, site.alice)
    browser.get(site.page(f"/ui/jobs/{job_id}"))
    wait_until(browser, lambda d: "sleeping" in d.find_element(By.ID, "stdout").text)
    browser.find_element(By.ID, "cancel-job").click()
    wait_until(browser, lambda d: state_of(d) == "REVOKED" and job_page_final(d))
    assert browser.find_elements(By.ID, "cancel-job") == []
    status = client.get(f"/api/jobs/v1/{job_id}/status/").json()
    assert status == {"status": "REVOKED", "is_complete": True}
    assert console_errors(browser) == []


def test_the_list_filters_pages_and_refreshes_itself(
    site: Site, browser: WebDriver, alice_key: str, tmp_path: Path
) -> None:
    client = site.daemon.client(alice_key)
    quick = [client.submit("sleeper", "0", job_name=f"quick {i}") for i in range(52)]
    for job_id in quick:
        client.wait(job_id)
    go = tmp_path / "go"
    live = client.submit("pagedemo", f"--go {go}", job_name="listed live")
    sign_in(browser, site, site.alice)
    browser.get(site.page("/ui/jobs"))
    assert browser.title == "Jobs · jobferry"
    row = browser.find_element(By.ID, f"job-{live}")
    wait_until(browser, lambda d: row.find_element(By.CSS_SELECTOR, ".job-state").text == "running")
    screenshot(browser, "jobs")
    go.write_text("go")
    # No reload: the row's state changes in place.
    wait_until(
        browser, lambda d: row.find_element(By.CSS_SELECTOR, ".job-state").text == "completed"
    )
    # Filter by script and state (the form, as a person uses it).
    browser.find_element(By.ID, "f-script").send_keys("sleeper")
    Select(browser.find_element(By.ID, "f-state")).select_by_visible_text("completed")
    browser.find_element(By.ID, "apply-filters").click()
    wait_until(browser, lambda d: "script=sleeper" in d.current_url)
    names = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#job-list .job-name")]
    assert len(names) == 50 and names[0] == "quick 51" and "listed live" not in names
    browser.find_element(By.ID, "older-page").click()
    wait_until(browser, lambda d: "older=" in d.current_url)
    names = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#job-list .job-name")]
    assert names[:2] == ["quick 1", "quick 0"]
    browser.find_element(By.ID, "newer-page").click()
    wait_until(browser, lambda d: "newer=" in d.current_url)
    first = browser.find_element(By.CSS_SELECTOR, "#job-list .job-name").text
    assert first == "quick 51"
    assert console_errors(browser) == []
