"""The whole journey in Chromium (the issue's "Tests in a real browser"), as a person
with only a browser: sign in, find a script, fill its generated form (a file upload
and a choice), submit, watch the job page go from queued to completed with stdout
appearing while it runs, download an output and compare its bytes, rerun it, cancel
a long job and see it end REVOKED, sign out and be refused. A screenshot of each
main page goes to ``test-artifacts/screenshots/journey-*.png``.

The daemon offers one core, so the job being watched waits (queued) behind a long
job until that one is cancelled; the script (``journey.py``) waits for a go-ahead
file the test creates, so its first line is seen while it runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import Select

from tests.browser.support import (
    Site,
    WebDriver,
    add_demo_scripts,
    console_errors,
    job_page_final,
    open_script,
    running_site,
    screenshot,
    sign_in,
    wait_until,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

TEXT = b"Hello, Browser World\nsecond line: MiXeD case 42\n"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """A daemon with one core for jobs: a second job waits for the first."""
    data_dir = tmp_path_factory.mktemp("journey") / "data"
    with running_site(data_dir, config={"node": {"cores": 1}}) as made:
        yield made


@pytest.fixture(scope="module")
def slug(site: Site) -> str:
    return add_demo_scripts(site, "case changer", "journey.py")


def param(browser: WebDriver, dest: str, css: str = "input, select") -> WebElement:
    """The input of the generated form's parameter *dest*."""
    box = browser.find_element(By.CSS_SELECTOR, f'.param[data-param="{dest}"]')
    found = [
        e for e in box.find_elements(By.CSS_SELECTOR, css) if e.get_attribute("type") != "checkbox"
    ]
    assert found, box.get_attribute("outerHTML")
    return found[0]


def fill_and_submit(browser: WebDriver, name: str, text: Path | None, case: str, go: Path) -> str:
    """Fill the form on the page (a file unless *text* is None: kept), submit; the job id."""
    job_name = browser.find_element(By.ID, "job_name")
    job_name.clear()
    job_name.send_keys(name)
    if text is not None:
        param(browser, "text", "input[type=file]").send_keys(str(text))
    Select(param(browser, "case", "select")).select_by_visible_text(case)
    go_field = param(browser, "go", "input[type=text]")
    go_field.clear()
    go_field.send_keys(str(go))
    before = browser.current_url
    browser.find_element(By.ID, "submit-job").click()
    wait_until(browser, lambda d: d.current_url != before and "/ui/jobs/" in d.current_url)
    return browser.current_url.rsplit("/ui/jobs/", 1)[1].split("?")[0]


def state(browser: WebDriver) -> str:
    return browser.find_element(By.ID, "job-state").get_attribute("data-state") or ""


def stdout(browser: WebDriver) -> str:
    return browser.find_element(By.ID, "stdout").text


def finished(browser: WebDriver) -> bool:
    """The job ended ok and its page has reloaded into its final form."""
    return state(browser) == "ok" and "finished" in stdout(browser) and job_page_final(browser)


def test_a_person_with_only_a_browser_runs_follows_downloads_reruns_and_cancels(
    site: Site, browser: WebDriver, slug: str, tmp_path: Path
) -> None:
    text = tmp_path / "Some Text.txt"
    text.write_bytes(TEXT)
    never, go = tmp_path / "never", tmp_path / "go"
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    browser.execute_cdp_cmd(
        "Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)}
    )

    # Sign in: the site sends a stranger to the sign-in page first.
    browser.get(site.page("/ui/"))
    wait_until(browser, lambda d: "/ui/sign-in" in d.current_url)
    sign_in(browser, site, site.alice)
    assert browser.current_url == site.page("/ui/")
    screenshot(browser, "journey-home")

    # Find the script: the catalogue, a search, its page with the generated form.
    browser.find_element(By.LINK_TEXT, "Scripts").click()
    wait_until(browser, lambda d: d.find_elements(By.ID, "script-query"))
    screenshot(browser, "journey-scripts")
    open_script(browser, "case", "case changer", slug)
    assert Select(param(browser, "case", "select")).first_selected_option.text == "lower"
    screenshot(browser, "journey-script-form")

    # A long job first: it holds the node's only core until it is cancelled.
    long_id = fill_and_submit(browser, "long job", text, "upper", never)
    wait_until(browser, lambda d: state(d) == "running" and "started:" in stdout(d))

    # The job to watch: queued behind the long one.
    browser.get(site.page(f"/ui/scripts/{slug}"))
    job_id = fill_and_submit(browser, "watched job", text, "swap", go)
    assert "watched job" in browser.title
    assert state(browser) == "queued"
    assert browser.find_element(By.ID, "job-state").text == "queued"
    assert stdout(browser) == ""
    screenshot(browser, "journey-job-queued")
    watched = browser.current_window_handle

    # Cancel the long job in another tab: it ends REVOKED.
    browser.switch_to.new_window("tab")
    browser.get(site.page("/ui/jobs"))
    wait_until(browser, lambda d: d.find_elements(By.ID, "job-list"))
    screenshot(browser, "journey-jobs")
    browser.find_element(By.CSS_SELECTOR, f"#job-{long_id} .job-name a").click()
    wait_until(browser, lambda d: d.current_url.endswith(f"/ui/jobs/{long_id}"))
    browser.find_element(By.ID, "cancel-job").click()
    wait_until(browser, lambda d: state(d) == "deleted" and job_page_final(d))
    assert browser.find_element(By.ID, "job-state").text == "REVOKED"
    screenshot(browser, "journey-job-revoked")
    assert console_errors(browser) == []
    browser.close()
    browser.switch_to.window(watched)

    # The watched job runs: its first line appears while it runs (no reload).
    wait_until(browser, lambda d: state(d) == "running" and "started:" in stdout(d))
    assert "case swap" in stdout(browser)
    screenshot(browser, "journey-job-running")
    go.touch()
    wait_until(browser, finished)
    assert browser.find_element(By.ID, "job-state").text == "completed"
    assert browser.find_element(By.ID, "job-exit-code").text == "0"
    screenshot(browser, "journey-job")

    # Download its output: the very bytes the job wrote.
    rows = browser.find_elements(By.CSS_SELECTOR, "#job-files tbody tr")
    [row] = [r for r in rows if r.find_element(By.CSS_SELECTOR, ".file-name").text == "result.txt"]
    row.find_element(By.CSS_SELECTOR, "a.download").click()
    result = downloads / "result.txt"
    wait_until(browser, lambda d: result.exists() and not list(downloads.glob("*.crdownload")))
    assert result.read_bytes() == TEXT.decode().swapcase().encode()

    # Rerun: the form comes back filled in (the file kept); change the choice, submit.
    browser.find_element(By.ID, "rerun-job").click()
    wait_until(browser, lambda d: d.find_elements(By.ID, "rerun-notice"))
    assert Select(param(browser, "case", "select")).first_selected_option.text == "swap"
    keep = browser.find_element(By.CSS_SELECTOR, '.param[data-param="text"] .keep input')
    assert keep.is_selected()
    screenshot(browser, "journey-rerun")
    rerun_id = fill_and_submit(browser, "watched job, again", None, "upper", go)
    assert rerun_id != job_id
    wait_until(browser, finished)
    assert "case upper" in stdout(browser)
    assert f"{len(TEXT.decode())} characters" in stdout(browser)  # the kept file's bytes
    assert console_errors(browser) == []

    # Sign out: the job's page now sends the browser to sign in, and shows nothing of it.
    browser.find_element(By.CSS_SELECTOR, ".sign-out button").click()
    wait_until(browser, lambda d: "/ui/sign-in" in d.current_url)
    browser.get(site.page(f"/ui/jobs/{job_id}"))
    wait_until(browser, lambda d: "/ui/sign-in" in d.current_url)
    assert browser.title == "Sign in · jobferry"
    assert "watched job" not in browser.page_source
    screenshot(browser, "journey-signed-out")
