"""A real daemon (no browser needed) ends and purges browser sessions: its heartbeat
deletes the rows of ended sessions, and ``jobferry user passwd`` signs out the
sessions opened with the old password while a key's session stays."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import pytest
import requests
from sqlalchemy import create_engine, func, select

from jobferry.store.models import WebSession
from tests.browser.support import Site, running_site
from tests.helpers import DEADLINE_S, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """A daemon that beats every half second (so purges come quickly)."""
    config = {"node": {"heartbeat_s": 0.5, "dead_after_s": 30}}
    with running_site(tmp_path_factory.mktemp("web-ends") / "data", config=config) as made:
        yield made


def sign_in(site: Site, **fields: str) -> requests.Session:
    session = requests.Session()
    page = session.get(site.page("/ui/sign-in"), timeout=DEADLINE_S)
    token = re.search(r'name="_xsrf" value="([^"]+)"', page.text)
    assert token, page.text
    answer = session.post(
        site.page("/ui/sign-in"), data={"_xsrf": token.group(1), **fields}, timeout=DEADLINE_S
    )
    assert answer.status_code == 200 and answer.url == site.page("/ui/"), answer.text
    return session


def signed_in(site: Site, session: requests.Session) -> bool:
    answer = session.get(site.page("/ui/keys"), timeout=DEADLINE_S, allow_redirects=False)
    assert answer.status_code in (200, 302), answer.status_code
    return answer.status_code == 200


def session_rows(site: Site) -> int:
    engine = create_engine(site.daemon.database_url)
    try:
        with engine.connect() as connection:
            return int(
                connection.execute(select(func.count()).select_from(WebSession)).scalar_one()
            )
    finally:
        engine.dispose()


def sign_out(site: Site, session: requests.Session) -> None:
    page = session.get(site.page("/ui/sign-out"), timeout=DEADLINE_S)
    token = re.search(r'name="_xsrf" value="([^"]+)"', page.text)
    assert token, page.text
    session.post(site.page("/ui/sign-out"), data={"_xsrf": token.group(1)}, timeout=DEADLINE_S)


def test_the_heartbeat_purges_ended_sessions_and_keeps_live_ones(site: Site) -> None:
    password = {"method": "password", "username": "alice", "password": site.alice.password}
    ending, staying = sign_in(site, **password), sign_in(site, **password)
    assert session_rows(site) == 2
    sign_out(site, ending)
    assert not signed_in(site, ending)
    wait_for("the signed-out session's row to be purged", lambda: session_rows(site) == 1)
    assert signed_in(site, staying)


def test_changing_a_password_signs_out_the_old_passwords_sessions(site: Site) -> None:
    key = site.daemon.cli("key", "create", "alice").stdout.strip()
    password = {"method": "password", "username": "alice", "password": site.alice.password}
    old = [sign_in(site, **password), sign_in(site, **password)]
    by_key = sign_in(site, method="api_key", api_key=key)
    assert all(signed_in(site, s) for s in (*old, by_key))
    new = "a brand new password for alice"
    done = site.daemon.cli("user", "passwd", "alice", "--json", input=f"{new}\n")
    assert json.loads(done.stdout)["sessions_ended"] >= 2
    assert [signed_in(site, s) for s in (*old, by_key)] == [False, False, True]
    # The heartbeat purges the ended sessions' rows: only the key's stays.
    wait_for("the old password's sessions to be purged", lambda: session_rows(site) == 1)
    assert signed_in(site, by_key)
    fresh = sign_in(site, method="password", username="alice", password=new)
    assert signed_in(site, fresh)
