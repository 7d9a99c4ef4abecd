"""Browser tests: a real daemon and Debian's headless Chromium driven by Selenium.

The helpers (the fixtures ``site`` and ``browser`` are in conftest.py):

- ``site`` (per module): a running daemon (``tests.helpers.DaemonProcess``) with
  an admin (``site.admin``, its API key in ``site.admin_key``) and a user
  ``alice`` (``site.alice``), both with passwords (``Account``).
- ``browser`` (per test): a fresh headless Chromium (its own profile in tmp).
  Without /usr/bin/chromium and /usr/bin/chromedriver the test is skipped, and
  fails when ``CI=true`` (``tests.services.require``).
- ``sign_in(driver, site, account)`` / ``sign_in_with_key(driver, site, key)``:
  through the sign-in page, as a person would; they return when the browser has
  landed on the page it was sent to.
- ``wait_until(driver, condition)``: WebDriverWait with the suite's generous deadline.
- ``screenshot(driver, name)``: a PNG in ``test-artifacts/screenshots/`` (git-ignored).
- ``console_errors(driver)``: the page's console errors (CSP violations among them).
- ``running_site(data_dir, config)``: ``start_site`` as a context manager (the
  daemon stopped at its end), for modules whose ``site`` needs a configuration.
- ``open_script(driver, query, name, slug)``: search the scripts catalogue and open
  the one script found.
- ``add_demo_scripts(site, name, script)``: *script* (form_demo.py) registered as *name* in group
  "Text" (and all_actions.py elsewhere); its slug. ``demo`` (conftest.py) is that
  as "line styler", per module.
- Without a browser: ``browser_session(site, account)``, a requests session signed
  in through the sign-in form, and ``xsrf(session, site, path)``, a page's CSRF token.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from tests.helpers import DEADLINE_S, ROOT, DaemonProcess
from tests.services import require

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,900",
)
#: Where screenshots go (git-ignored; CI keeps the directory as an artifact).
SCREENSHOTS = ROOT / "test-artifacts" / "screenshots"
PASSWORD = "correct horse battery staple"
#: The scripts the browser tests register (argparse demos).
SCRIPTS = ROOT / "tests" / "data" / "scripts"
#: A form's CSRF token in a page's HTML.
XSRF_FIELD = re.compile(r'name="_xsrf" value="([^"]+)"')


@dataclass(frozen=True)
class Account:
    username: str
    password: str
    is_admin: bool = False


@dataclass
class Site:
    """A running daemon and who may sign in to it."""

    daemon: DaemonProcess
    admin: Account
    alice: Account

    @property
    def url(self) -> str:
        return self.daemon.url

    @property
    def admin_key(self) -> str:
        return self.daemon.admin_key

    def page(self, path: str) -> str:
        """The absolute URL of *path* (``/ui/...``)."""
        return self.daemon.url + path


def start_site(data_dir: Path, config: dict[str, Any] | None = None) -> Site:
    """A daemon on *data_dir* with the admin's and alice's passwords set."""
    daemon = DaemonProcess(data_dir, config).start()
    admin = Account("admin", PASSWORD + " admin", is_admin=True)
    alice = Account("alice", PASSWORD)
    daemon.cli("user", "create", "alice")
    for account in (admin, alice):
        secret = account.password
        daemon.cli("user", "passwd", account.username, input=f"{secret}\n{secret}\n")
    return Site(daemon, admin, alice)


@contextmanager
def running_site(data_dir: Path, config: dict[str, Any] | None = None) -> Iterator[Site]:
    """``start_site``; its daemon is stopped when the block ends."""
    made = start_site(data_dir, config)
    try:
        yield made
    finally:
        made.daemon.stop()


def browser_session(site: Site, account: Account) -> requests.Session:
    """A requests session signed in through the sign-in form, as a browser is."""
    session = requests.Session()
    page = session.get(site.page("/ui/sign-in"), timeout=DEADLINE_S)
    token = XSRF_FIELD.search(page.text)
    assert token, page.text
    answer = session.post(
        site.page("/ui/sign-in"),
        data={
            "_xsrf": token.group(1),
            "method": "password",
            "username": account.username,
            "password": account.password,
        },
        timeout=DEADLINE_S,
        allow_redirects=False,
    )
    assert answer.status_code == 303, answer.text
    return session


def xsrf(session: requests.Session, site: Site, path: str) -> str:
    """The CSRF token of the form on *path*, as *session* gets it."""
    found = XSRF_FIELD.search(session.get(site.page(path), timeout=DEADLINE_S).text)
    assert found
    return found.group(1)


def add_demo_scripts(site: Site, name: str, script: str = "form_demo.py") -> str:
    """*script* registered as *name* in group "Text", and all_actions.py in group
    "Testing" (so that the catalogue has two groups); the slug of *name*."""
    client = site.daemon.client()
    client.add_script("every action", SCRIPTS / "all_actions.py", group="Testing")
    return str(client.add_script(name, SCRIPTS / script, group="Text")["slug"])


def require_browser() -> None:
    """Skip without Debian's chromium/chromedriver; fail instead when CI=true."""
    require("chromium")


def new_browser(profile_dir: Path) -> WebDriver:
    """A headless Chromium with its own profile directory."""
    options = Options()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile_dir}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(DEADLINE_S)
    driver.set_script_timeout(DEADLINE_S)
    return driver


def wait_until(
    driver: WebDriver, condition: Callable[[WebDriver], Any], timeout_s: float = DEADLINE_S
) -> Any:
    """*condition*'s first truthy value, polled until the (generous) deadline.

    A page may replace itself while a condition reads it (a job's page reloads when
    the job ends; a form's answer is a new page): an element found a moment earlier
    is then gone. Such a look counts as "not yet", like a missing element, and the
    next poll reads the new page."""

    def attempt(d: WebDriver) -> Any:
        try:
            return condition(d)
        except StaleElementReferenceException:
            return False
        except WebDriverException as exc:
            if any(sign in str(exc) for sign in _PAGE_REPLACED):
                return False
            raise

    return WebDriverWait(driver, timeout_s, poll_frequency=0.1).until(attempt)


def job_page_final(driver: WebDriver) -> bool:
    """Whether the browser shows a job's page in its final form: loaded, and not live
    (a live page reloads itself once its job ends; elements read before that reload
    are gone after it)."""
    return bool(
        driver.execute_script(
            "var job = document.getElementById('job');"
            "return document.readyState === 'complete' && !!job"
            " && job.getAttribute('data-live') === '0';"
        )
    )


#: What chromedriver says when an element or script context belonged to a page that a
#: navigation or reload has just replaced.
_PAGE_REPLACED = (
    "does not belong to the document",
    "Cannot find context with specified id",
    "Execution context was destroyed",
    "stale element",
)


def _submit_sign_in(driver: WebDriver, site: Site, fields: dict[str, str], button: str) -> None:
    if "/ui/sign-in" not in driver.current_url:
        driver.get(site.page("/ui/sign-in"))
    for name, value in fields.items():
        box = driver.find_element(By.ID, name)
        box.clear()
        box.send_keys(value)
    driver.find_element(By.ID, button).click()
    wait_until(driver, lambda d: "/ui/sign-in" not in d.current_url or _field_error(d))
    error = _field_error(driver)
    if error:
        raise AssertionError(f"sign-in refused: {error}")


def _field_error(driver: WebDriver) -> str:
    return " ".join(e.text for e in driver.find_elements(By.CSS_SELECTOR, ".field-error"))


def sign_in(driver: WebDriver, site: Site, account: Account) -> None:
    """Sign *driver* in with *account*'s password, through the sign-in page (if the
    browser is on the sign-in page already, its ``next=`` is followed)."""
    fields = {"username": account.username, "password": account.password}
    _submit_sign_in(driver, site, fields, "sign-in-password")


def sign_in_with_key(driver: WebDriver, site: Site, key: str) -> None:
    """Sign *driver* in with an API key, through the sign-in page."""
    _submit_sign_in(driver, site, {"api_key": key}, "sign-in-key")


def screenshot(driver: WebDriver, name: str) -> Path:
    """Save the page as ``test-artifacts/screenshots/<name>.png``; its path."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    # The whole page, not only the window: as tall as the document.
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1280, max(900, min(int(height), 4000)))
    assert driver.save_screenshot(str(path)), f"no screenshot saved at {path}"
    return path


def console_errors(driver: WebDriver) -> list[str]:
    """The browser console's errors since the last call (CSP refusals among them)."""
    return [e["message"] for e in driver.get_log("browser") if e.get("level") == "SEVERE"]


def open_script(driver: WebDriver, query: str, name: str, slug: str) -> None:
    """On the scripts catalogue: search for *query*, check that the one script found
    is *name*, open it and wait for its page (``/ui/scripts/<slug>``)."""
    search = driver.find_element(By.ID, "script-query")
    search.send_keys(query)
    search.submit()
    wait_until(driver, lambda d: f"q={query}" in d.current_url)
    links = driver.find_elements(By.CSS_SELECTOR, "#script-catalogue a.script-link")
    assert [a.text for a in links] == [name]
    links[0].click()
    wait_until(driver, lambda d: d.current_url.endswith(f"/ui/scripts/{slug}"))
    assert driver.title == f"{name} · jobferry"
