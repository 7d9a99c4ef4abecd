"""The issue's Safety test: nothing a user controls runs or becomes markup, on any page.

A job named ``<script>alert(1)</script>`` with an input named
``"><img src=x onerror=alert(1)>.txt`` (submitted through the JSON API) prints HTML to
stdout and stderr and writes outputs whose names and contents are HTML (``xss_job.py``);
its script's description, help, group and choices are HTML; a key is named with HTML;
this daemon's node name and labels are HTML. Chromium opens every page that shows
them — the job list, the job page while it runs (live tail) and once done (previews,
downloads), the permalink, the script catalogue, the script page and the rerun form,
the keys page, the nodes page — and on each:

- no alert opened (``switch_to.alert`` raises ``NoAlertPresentException``);
- no injected element (``img[src='x']``, inline ``<script>``, ``<iframe>``...) and no
  element with an ``on*`` attribute anywhere in the document;
- the console has no error (an injected inline script blocked by the CSP would be one);
- the hostile text is *shown*, as text (so the page really rendered it);
- the answer carries the Content-Security-Policy.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver.common.by import By

from jobferry.web.base import CSP
from tests.browser.support import (
    Site,
    WebDriver,
    console_errors,
    job_page_final,
    running_site,
    screenshot,
    sign_in,
    wait_until,
)
from tests.helpers import DEADLINE_S, JOB_SCRIPTS, Client

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

JOB_NAME = "<script>alert(1)</script>"
TAG = '"><img src=x onerror=alert(1)>'
FILE_NAME = TAG + ".txt"
GROUP = "<img src=x onerror=alert(7)> group"
DESCRIPTION = "Prints HTML <script>alert(3)</script><img src=x onerror=alert(3)>"
NODE = TAG + " node"
LABEL = ("<script>alert(8)</script>", "<img src=x onerror=alert(8)>")
#: What an injection would have made: none of it may be in any page.
INJECTED = (
    "img[src='x'], script:not([src]), iframe, object, embed, svg script, "
    "a[href^='javascript:'], b, textarea img"
)
#: Every element with an inline event handler attribute (none may exist on our pages).
ON_ATTRIBUTES = """
return Array.from(document.querySelectorAll('*')).flatMap(e =>
  Array.from(e.attributes).filter(a => a.name.toLowerCase().startsWith('on'))
    .map(a => e.tagName + ' ' + a.name));
"""
PAGE_NOT_FOUND = "Page not found · jobferry"


@dataclass
class HostileJob:
    id: str
    uuid: str
    slug: str
    start: Path
    go: Path

    def release(self) -> None:
        self.start.touch()
        self.go.touch()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """A daemon whose node name and labels are HTML."""
    config = {"node": {"name": NODE, "labels": {LABEL[0]: LABEL[1]}}}
    with running_site(tmp_path_factory.mktemp("xss") / "data", config=config) as made:
        yield made


@pytest.fixture(scope="module")
def slug(site: Site) -> str:
    added = site.daemon.client().add_script(
        "xss_job", JOB_SCRIPTS / "xss_job.py", group=GROUP, script_description=DESCRIPTION
    )
    return str(added["slug"])


def submit(site: Site, slug: str, gates: Path) -> HostileJob:
    """The hostile job, through the Wooey JSON API (as the admin); it waits for the files
    ``start`` (before printing) and ``go`` (before finishing) in *gates*."""
    client: Client = site.daemon.client()
    start, go = gates / "start", gates / "go"
    command = shlex.join(
        ["--infile", "upload", "--mode", TAG, "--title", JOB_NAME]
        + ["--start", str(start), "--go", str(go)]
    )
    job_id = client.submit(
        slug,
        command,
        files={"upload": (FILE_NAME, b"<script>alert(1)</script>\n" + TAG.encode() + b"\n")},
        job_name=JOB_NAME,
    )
    details = client.get(f"/api/jobs/v1/{job_id}/details/").json()
    return HostileJob(job_id, str(details["uuid"]), slug, start, go)


@pytest.fixture(scope="module")
def finished(site: Site, slug: str, tmp_path_factory: pytest.TempPathFactory) -> HostileJob:
    job = submit(site, slug, tmp_path_factory.mktemp("gates"))
    job.release()
    ended = site.daemon.client().wait(job.id, timeout_s=2 * DEADLINE_S)
    assert ended["status"] == "completed", ended
    return job


def require_page(browser: WebDriver, site: Site, path: str) -> None:
    """Open *path*, a page of the site (a 404 page fails the test)."""
    browser.get(site.page(path))
    assert browser.title != PAGE_NOT_FOUND, path


def assert_inert(browser: WebDriver, site: Site, *, shows: tuple[str, ...] = ()) -> None:
    """The page in *browser* ran nothing and parsed nothing hostile, and shows *shows*."""
    wait_until(browser, lambda d: d.execute_script("return document.readyState") == "complete")
    where = browser.current_url
    assert browser.title != PAGE_NOT_FOUND, where
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert  # noqa: B018  (the property raises when no alert is open)
    assert browser.find_elements(By.CSS_SELECTOR, INJECTED) == [], where
    assert browser.execute_script(ON_ATTRIBUTES) == [], where
    text = browser.find_element(By.TAG_NAME, "body").text
    for shown in shows:
        assert shown in text, (where, shown)
    assert console_errors(browser) == [], where
    answer = fetch(browser, where)
    assert answer.headers.get("Content-Security-Policy") == CSP, where
    assert answer.headers.get("X-Content-Type-Options") == "nosniff", where


def fetch(browser: WebDriver, url: str) -> requests.Response:
    """*url* with the browser's cookies (its session): what the browser was answered."""
    cookies = {c["name"]: c["value"] for c in browser.get_cookies()}
    return requests.get(url, cookies=cookies, timeout=DEADLINE_S, allow_redirects=False)


def links(browser: WebDriver, contains: str) -> list[str]:
    hrefs = [a.get_attribute("href") or "" for a in browser.find_elements(By.TAG_NAME, "a")]
    return sorted({h.split("#")[0] for h in hrefs if contains in h})


def test_the_job_list_and_a_running_jobs_live_tail_run_nothing(
    site: Site, browser: WebDriver, slug: str, tmp_path: Path
) -> None:
    job = submit(site, slug, tmp_path)
    try:
        see_the_list_and_the_live_tail(site, browser, job)
    finally:
        job.release()  # never leave the job waiting


def see_the_list_and_the_live_tail(site: Site, browser: WebDriver, job: HostileJob) -> None:
    sign_in(browser, site, site.admin)
    require_page(browser, site, "/ui/jobs")
    assert_inert(browser, site, shows=(JOB_NAME,))
    screenshot(browser, "xss-jobs")

    require_page(browser, site, f"/ui/jobs/{job.id}")
    wait_until(browser, lambda d: d.find_elements(By.ID, "stdout"))
    assert browser.find_element(By.ID, "stdout").text == ""  # nothing printed yet
    # The live tail: the hostile stdout and stderr arrive while the page is open.
    job.start.touch()
    line = f"{TAG} mode={TAG} title={JOB_NAME}"
    wait_until(browser, lambda d: d.find_element(By.TAG_NAME, "body").text.count(line) >= 2)
    assert_inert(browser, site, shows=(JOB_NAME, "<script>alert(1)</script>", line))
    screenshot(browser, "xss-job-running")
    job.go.touch()
    site.daemon.client().wait(job.id, timeout_s=2 * DEADLINE_S)
    # The last line and the end reach the page (live, or by its reload at the end).
    wait_until(
        browser,
        lambda d: "go-ahead seen" in d.find_element(By.TAG_NAME, "body").text and job_page_final(d),
    )
    assert_inert(browser, site, shows=("</pre><iframe src=javascript:alert(1)></iframe>",))


def test_a_finished_jobs_page_previews_downloads_and_permalink_run_nothing(
    site: Site, browser: WebDriver, finished: HostileJob
) -> None:
    sign_in(browser, site, site.admin)
    page = f"/ui/jobs/{finished.id}"
    require_page(browser, site, page)
    assert_inert(browser, site, shows=(JOB_NAME, FILE_NAME, "table.csv", "page.html"))
    screenshot(browser, "xss-job")

    # The previews on the page: the CSV as a table, the text files as text.
    assert_inert(browser, site, shows=("<b>bold?</b>", "<img src=x onerror=alert(1)>"))
    files = links(browser, f"{page}/files/")
    images = [i.get_attribute("src") or "" for i in browser.find_elements(By.TAG_NAME, "img")]
    views = sorted({u for u in files + images if f"{page}/files/" in u and u.endswith("/view")})
    downloads = [u for u in files if not u.endswith("/view")]
    assert len(downloads) >= 5, files  # the input, its copy, table.csv, page.html, image.svg
    for url in views:  # each inline view, opened as a page of its own
        browser.get(url)
        assert_inert(browser, site)
    for url in downloads:  # each download: an attachment (or plain text), never a page
        answer = fetch(browser, url)
        assert answer.status_code == 200, (url, answer.status_code)
        assert answer.headers.get("Content-Security-Policy") == CSP, url
        assert answer.headers.get("X-Content-Type-Options") == "nosniff", url
        disposition = answer.headers.get("Content-Disposition", "")
        kind = answer.headers.get("Content-Type", "")
        attachment = disposition.startswith("attachment")
        assert attachment or kind.startswith("text/plain"), (url, disposition, kind)
        assert attachment or ("html" not in kind and "svg" not in kind), (url, kind)
        browser.get(url)
        with pytest.raises(NoAlertPresentException):
            browser.switch_to.alert  # noqa: B018

    browser.get(site.page(page))
    [permalink] = links(browser, "/ui/jobs/uuid/")
    assert finished.uuid in permalink
    browser.get(permalink)
    assert_inert(browser, site, shows=(JOB_NAME, FILE_NAME))
    screenshot(browser, "xss-permalink")


def test_the_script_pages_and_the_rerun_form_run_nothing(
    site: Site, browser: WebDriver, finished: HostileJob
) -> None:
    sign_in(browser, site, site.admin)
    require_page(browser, site, "/ui/scripts")
    assert_inert(browser, site, shows=(GROUP,))
    require_page(browser, site, f"/ui/scripts/{finished.slug}")
    assert_inert(browser, site, shows=(DESCRIPTION, "input <img src=x onerror=alert(4)>"))
    options = [o.text for o in browser.find_elements(By.CSS_SELECTOR, "option")]
    options += [
        (r.get_attribute("value") or "")
        for r in browser.find_elements(By.CSS_SELECTOR, "input[type='radio']")
    ]
    assert TAG in options and "<b>plain</b>" in options, options
    screenshot(browser, "xss-script")

    # The rerun form, reached from the job page, prefilled with the hostile values.
    require_page(browser, site, f"/ui/jobs/{finished.id}")
    [rerun] = links(browser, "rerun=")
    browser.get(rerun)
    assert_inert(browser, site, shows=(DESCRIPTION,))
    values = [
        e.get_attribute("value") or "" for e in browser.find_elements(By.CSS_SELECTOR, "input")
    ]
    assert JOB_NAME in values, values  # --title, as a value, not markup
    screenshot(browser, "xss-rerun")


def test_a_hostile_key_name_runs_nothing(site: Site, browser: WebDriver) -> None:
    sign_in(browser, site, site.alice)
    require_page(browser, site, "/ui/keys")
    browser.find_element(By.ID, "key-name").send_keys(TAG)
    browser.find_element(By.ID, "create-key").click()
    wait_until(browser, lambda d: d.find_elements(By.ID, "new-key-value"))
    assert_inert(browser, site, shows=(TAG,))
    browser.get(site.page("/ui/keys"))
    assert_inert(browser, site, shows=(TAG,))
    screenshot(browser, "xss-keys")


def test_a_hostile_node_name_and_labels_run_nothing_and_drain(
    site: Site, browser: WebDriver
) -> None:
    sign_in(browser, site, site.admin)
    require_page(browser, site, "/ui/nodes")
    assert_inert(browser, site, shows=(NODE, f"{LABEL[0]}={LABEL[1]}"))
    screenshot(browser, "xss-nodes")
    browser.find_element(By.CSS_SELECTOR, "button.drain").click()
    wait_until(browser, lambda d: "drained=" in d.current_url)
    assert_inert(browser, site, shows=(f"Node {NODE} drained.",))
    browser.find_element(By.CSS_SELECTOR, "button.undrain").click()
    wait_until(browser, lambda d: "undrained=" in d.current_url)
    assert_inert(browser, site, shows=(f"Node {NODE} undrained.",))
    assert site.daemon.client().get("/api/nodes").json()[0]["drained"] is False
