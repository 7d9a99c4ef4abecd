"""The pages served by a real daemon (no browser needed): ``/`` to ``/ui/``, static
files, and ``jobferry user logout-all`` ending a signed-in session."""

from __future__ import annotations

import json
import re

import pytest
import requests

from tests.browser.support import Site
from tests.helpers import DEADLINE_S

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


def signed_in_session(site: Site) -> requests.Session:
    session = requests.Session()
    page = session.get(site.page("/ui/sign-in"), timeout=DEADLINE_S)
    token = re.search(r'name="_xsrf" value="([^"]+)"', page.text)
    assert token, page.text
    fields = {"_xsrf": token.group(1), "username": "alice", "password": site.alice.password}
    answer = session.post(site.page("/ui/sign-in"), data=fields, timeout=DEADLINE_S)
    assert answer.status_code == 200 and answer.url == site.page("/ui/"), answer.text
    return session


def test_a_browser_opening_the_daemons_address_lands_on_sign_in(site: Site) -> None:
    answer = requests.get(site.url, timeout=DEADLINE_S)
    assert answer.url == site.page("/ui/sign-in?next=%2Fui%2F")
    assert "<title>Sign in · jobferry</title>" in answer.text
    css = requests.get(site.page("/ui/static/site.css"), timeout=DEADLINE_S)
    assert css.status_code == 200 and css.headers["Content-Type"].startswith("text/css")


def test_user_logout_all_ends_the_sessions_of_that_user(site: Site) -> None:
    first, second = signed_in_session(site), signed_in_session(site)
    done = site.daemon.cli("user", "logout-all", "alice", "--json")
    assert json.loads(done.stdout) == {"username": "alice", "sessions_ended": 2}
    for session in (first, second):
        answer = session.get(site.page("/ui/"), timeout=DEADLINE_S, allow_redirects=False)
        assert answer.status_code == 302
        assert answer.headers["Location"].startswith("/ui/sign-in")
    text = site.daemon.cli("user", "logout-all", "alice").stdout
    assert text.split() == ["username", "alice", "sessions_ended", "0"]


def test_user_logout_all_of_an_unknown_user_is_one_error_line(site: Site) -> None:
    refused = site.daemon.cli("user", "logout-all", "nobody", check=False)
    assert refused.returncode != 0
    assert refused.stderr.strip().splitlines() == ["jobferry: error: no user named 'nobody'"]
