"""The browser face over HTTP, in-process (a real Tornado server on 127.0.0.1 in a
thread, a real store): cookies, CSRF, security headers, error pages, ``next=``,
failed sign-ins limited, sign-out revoking server-side, the keys page."""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import tornado.httpserver
import tornado.netutil

from jobferry.api.app import make_app
from jobferry.config import parse_config
from jobferry.services.container import Services, build
from jobferry.services.core import Core
from jobferry.store.engine import check_schema
from jobferry.web import web_routes
from jobferry.web.base import CSP, SESSION_COOKIE, WebHandler, admin_only, safe_next
from tests.db import with_database
from tests.helpers import DEADLINE_S, wait_for

PASSWORD = "correct horse battery staple"
XSRF_FIELD = re.compile(r'name="_xsrf" value="([^"]+)"')


class BoomHandler(WebHandler):
    """A page with a bug: what a 500 looks like."""

    def get(self) -> None:
        raise RuntimeError("secret internals: /srv/data/db password=hunter2")


class AdminPage(WebHandler):
    @admin_only
    def get(self) -> None:
        self.render_page("home.html", title="Admin only")


@dataclass
class Server:
    url: str
    services: Services

    def page(self, path: str) -> str:
        return self.url + path


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    data = tmp_path / "data"
    config = parse_config(
        with_database(
            {
                "data_dir": str(data),
                "server": {"xheaders": True},
                "web": {"sign_in_failures_per_minute": 3},
            },
            data,
        )
    )
    core = Core(config, runners={})
    core.ensure_dirs()
    check_schema(core.engine)
    services = build(core)
    services.auth.ensure_admin()
    services.auth.create_user("alice")
    services.users.set_password("alice", PASSWORD)
    services.users.set_password("admin", PASSWORD)
    s = {"services": services}
    routes = [(r"/ui/boom", BoomHandler, s), (r"/ui/admin-only", AdminPage, s)]
    app = make_app(services, extra_routes=[*routes, *web_routes(services)])
    loop = asyncio.new_event_loop()
    sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
    started = threading.Event()
    holder: dict[str, Any] = {}

    def run() -> None:
        asyncio.set_event_loop(loop)

        async def start() -> None:
            holder["server"] = tornado.httpserver.HTTPServer(app, xheaders=True)
            holder["server"].add_sockets(sockets)
            started.set()

        loop.run_until_complete(start())
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert started.wait(DEADLINE_S)
    try:
        yield Server(f"http://127.0.0.1:{sockets[0].getsockname()[1]}", services)
    finally:

        async def stop() -> None:
            holder["server"].stop()
            await holder["server"].close_all_connections()

        asyncio.run_coroutine_threadsafe(stop(), loop).result(DEADLINE_S)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(DEADLINE_S)
        loop.close()
        core.close()


def get(session: requests.Session, url: str, **kw: Any) -> requests.Response:
    return session.get(url, timeout=DEADLINE_S, allow_redirects=False, **kw)


def post(session: requests.Session, url: str, **kw: Any) -> requests.Response:
    return session.post(url, timeout=DEADLINE_S, allow_redirects=False, **kw)


def form_token(session: requests.Session, server: Server, path: str = "/ui/sign-in") -> str:
    page = get(session, server.page(path))
    found = XSRF_FIELD.search(page.text)
    assert found, page.text
    return found.group(1)


def sign_in(
    session: requests.Session,
    server: Server,
    username: str = "alice",
    password: str = PASSWORD,
    **extra: str,
) -> requests.Response:
    fields = {"_xsrf": form_token(session, server), "method": "password", **extra}
    fields.update(username=username, password=password)
    return post(session, server.page("/ui/sign-in"), data=fields)


def on_keys_page(server: Server) -> tuple[requests.Session, str]:
    """A session signed in as alice, and the keys page's form token."""
    session = requests.Session()
    sign_in(session, server)
    return session, form_token(session, server, "/ui/keys")


def assert_site_page(response: requests.Response, status: int, title: str) -> None:
    """An HTML page of the site (its layout and stylesheet), never a traceback."""
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("text/html")
    assert f"<title>{title} · jobferry</title>" in response.text
    assert "/ui/static/site.css?v=" in response.text
    assert 'class="skip-link" href="#main"' in response.text
    assert "Traceback" not in response.text


def assert_security_headers(response: requests.Response) -> None:
    assert response.headers["Content-Security-Policy"] == CSP
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"] == "same-origin"


def cookie_header(response: requests.Response, name: str) -> str:
    found = [c for c in response.raw.headers.getlist("Set-Cookie") if c.startswith(name + "=")]
    assert len(found) == 1, response.raw.headers.getlist("Set-Cookie")
    return found[0]


def test_the_root_sends_a_browser_to_the_pages(server: Server) -> None:
    response = get(requests.Session(), server.page("/"))
    assert response.status_code == 302 and response.headers["Location"] == "/ui/"


def test_the_session_cookie_is_signed_httponly_samesite_strict_and_limited_to_ui(
    server: Server,
) -> None:
    session = requests.Session()
    response = sign_in(session, server, next="/ui/keys")
    assert response.status_code == 303 and response.headers["Location"] == "/ui/keys"
    cookie = cookie_header(response, SESSION_COOKIE)
    attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")[1:]}
    assert {"httponly", "samesite", "path"} <= attributes
    assert "; SameSite=Strict" in cookie and "; Path=/ui" in cookie
    assert (
        "secure" not in attributes and "expires" not in attributes
    )  # plain http; a session cookie
    assert "jfs_" not in cookie  # the token is inside a signed (base64) value
    assert get(session, server.page("/ui/")).status_code == 200


def test_cookies_are_secure_over_https_behind_a_proxy(server: Server) -> None:
    session = requests.Session()
    https = {"X-Forwarded-Proto": "https"}
    page = get(session, server.page("/ui/sign-in"), headers=https)
    assert "; Secure" in cookie_header(page, "_xsrf")
    token = XSRF_FIELD.search(page.text).group(1)  # type: ignore[union-attr]
    fields = {"_xsrf": token, "username": "alice", "password": PASSWORD}
    # requests keeps a Secure cookie for https: hand it over as the browser would.
    cookie = cookie_header(page, "_xsrf").split(";")[0]
    response = post(
        requests.Session(),
        server.page("/ui/sign-in"),
        data=fields,
        headers={**https, "Cookie": cookie},
    )
    assert response.status_code == 303
    assert "; Secure" in cookie_header(response, SESSION_COOKIE)


def test_a_tampered_cookie_signs_nobody_in(server: Server) -> None:
    session = requests.Session()
    sign_in(session, server)
    value = session.cookies[SESSION_COOKIE]
    session.cookies.set(SESSION_COOKIE, value[:-4] + ("0000" if value[-4:] != "0000" else "1111"))
    response = get(session, server.page("/ui/"))
    assert response.status_code == 302
    assert response.headers["Location"].startswith("/ui/sign-in?next=")


@pytest.mark.parametrize("token", [None, "2|00000000|00000000000000000000000000000000|1"])
def test_a_form_without_its_csrf_token_is_refused_with_a_403_page(
    server: Server, token: str | None
) -> None:
    session = requests.Session()
    form_token(session, server)  # the browser has the cookie, but not the form's token
    fields = {"username": "alice", "password": PASSWORD}
    if token:
        fields["_xsrf"] = token
    response = post(session, server.page("/ui/sign-in"), data=fields)
    assert_site_page(response, 403, "Not allowed")
    assert "came from another site" in response.text
    assert SESSION_COOKIE not in session.cookies


def test_signing_out_ends_the_session_on_the_server(server: Server) -> None:
    session = requests.Session()
    sign_in(session, server)
    stolen = session.cookies[SESSION_COOKIE]
    token = form_token(session, server, "/ui/")
    response = post(session, server.page("/ui/sign-out"), data={"_xsrf": token})
    assert response.status_code == 303 and response.headers["Location"] == "/ui/sign-in"
    replay = requests.Session()
    replay.cookies.set(SESSION_COOKIE, stolen, path="/ui")
    assert get(replay, server.page("/ui/")).headers["Location"].startswith("/ui/sign-in")


@pytest.mark.parametrize(
    "target",
    [
        "https://evil.example/ui/",
        "//evil.example/ui/",
        "/\\evil.example",
        "/api/jobs/v1/",
        "javascript:alert(1)",
        "/ui/../api/",
        "ui/keys",
        "/uiother",
    ],
)
def test_next_never_leaves_the_sites_pages(server: Server, target: str) -> None:
    assert safe_next(target) == "/ui/"
    response = sign_in(requests.Session(), server, next=target)
    assert response.status_code == 303 and response.headers["Location"] == "/ui/"


def test_next_to_a_page_of_the_site_is_followed(server: Server) -> None:
    assert safe_next("/ui/jobs?state=running") == "/ui/jobs?state=running"
    response = sign_in(requests.Session(), server, next="/ui/jobs?state=running")
    assert response.headers["Location"] == "/ui/jobs?state=running"


def test_failed_sign_ins_are_limited_then_shown_as_a_429_page(server: Server) -> None:
    session = requests.Session()
    for _ in range(3):
        wrong = sign_in(session, server, password="not it")
        assert_site_page(wrong, 403, "Sign in")
        assert 'id="password-error"' in wrong.text
        assert "Invalid email, username or password." in wrong.text
    refused = sign_in(session, server)  # the right password, past the limit
    assert_site_page(refused, 429, "Sign in")
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert "Too many failed attempts" in refused.text
    assert SESSION_COOKIE not in session.cookies


def test_missing_fields_are_shown_next_to_each(server: Server) -> None:
    response = sign_in(requests.Session(), server, username="", password="")
    assert_site_page(response, 400, "Sign in")
    assert 'id="username-error"' in response.text and 'id="password-error"' in response.text


@pytest.mark.parametrize(
    ("path", "status", "title", "signed_in"),
    [
        ("/ui/no-such-page", 404, "Page not found", False),
        ("/ui/no-such-page", 404, "Page not found", True),
        ("/ui/admin-only", 403, "Not allowed", True),
        ("/ui/boom", 500, "Something went wrong", True),
    ],
)
def test_errors_are_pages_in_the_sites_style(
    server: Server, path: str, status: int, title: str, signed_in: bool
) -> None:
    session = requests.Session()
    if signed_in:
        sign_in(session, server)
    response = get(session, server.page(path))
    assert_site_page(response, status, title)
    assert_security_headers(response)
    assert "hunter2" not in response.text and "RuntimeError" not in response.text
    if signed_in:
        assert "Signed in as <strong>alice</strong>" in response.text


def test_an_admin_only_page_sends_a_stranger_to_sign_in(server: Server) -> None:
    response = get(requests.Session(), server.page("/ui/admin-only"))
    assert response.status_code == 302
    assert response.headers["Location"] == "/ui/sign-in?next=%2Fui%2Fadmin-only"
    admin = requests.Session()
    sign_in(admin, server, username="admin")
    assert get(admin, server.page("/ui/admin-only")).status_code == 200


def test_every_answer_carries_the_csp_and_security_headers(server: Server) -> None:
    session = requests.Session()
    answers = [
        get(session, server.page("/")),
        get(session, server.page("/ui/")),
        get(session, server.page("/ui/sign-in")),
        post(session, server.page("/ui/sign-in"), data={}),
        get(session, server.page("/ui/static/site.css")),
        get(session, server.page("/ui/static/nothing.css")),
    ]
    sign_in(session, server)
    answers += [get(session, server.page(p)) for p in ("/ui/", "/ui/keys", "/ui/sign-out")]
    answers.append(get(session, server.page("/ui/boom")))
    for response in answers:
        assert_security_headers(response)
    for response in answers[:4] + answers[6:]:
        assert response.headers["Cache-Control"] == "no-store"
    assert "default-src 'self'; script-src 'self';" in CSP and "unsafe-inline" not in CSP


def test_no_page_has_inline_script_or_style(server: Server) -> None:
    session = requests.Session()
    pages = [get(session, server.page("/ui/sign-in")).text]
    sign_in(session, server)
    pages += [get(session, server.page(p)).text for p in ("/ui/", "/ui/keys", "/ui/nope")]
    for text in pages:
        assert "<script>" not in text and " style=" not in text and "<style" not in text
        assert re.search(r"\son[a-z]+=", text) is None  # no inline event handlers
        assert "http://" not in text and "https://" not in text  # nothing from elsewhere


def test_the_keys_page_shows_a_new_key_once_and_revokes_it(server: Server) -> None:
    session, token = on_keys_page(server)
    created = post(session, server.page("/ui/keys"), data={"_xsrf": token, "name": "laptop"})
    assert_site_page(created, 201, "API keys")
    key = re.search(r'id="new-key-value"[^>]*value="(jf_[^"]+)"', created.text)
    assert key, created.text
    assert server.services.auth.authenticate(key.group(1)).username == "alice"
    listing = get(session, server.page("/ui/keys"))
    assert "laptop" in listing.text and key.group(1) not in listing.text
    [laptop] = [k for k in server.services.auth.list_keys("alice") if k.name == "laptop"]
    assert f'action="/ui/keys/{laptop.id}/revoke"' in listing.text
    revoked = post(session, server.page(f"/ui/keys/{laptop.id}/revoke"), data={"_xsrf": token})
    assert revoked.status_code == 303 and revoked.headers["Location"] == "/ui/keys?revoked=1"
    assert "The key was revoked." in get(session, server.page("/ui/keys?revoked=1")).text
    [info] = [k for k in server.services.auth.list_keys("alice") if k.name == "laptop"]
    assert not info.is_active


def test_a_key_needs_a_name_shown_next_to_the_field(server: Server) -> None:
    session, token = on_keys_page(server)
    response = post(session, server.page("/ui/keys"), data={"_xsrf": token, "name": " "})
    assert_site_page(response, 400, "API keys")
    assert 'id="key-name-error"' in response.text and 'aria-invalid="true"' in response.text
    assert [k.name for k in server.services.auth.list_keys("alice")] == ["default"]


def test_someone_elses_key_cannot_be_revoked(server: Server) -> None:
    [admin_key] = server.services.auth.list_keys("admin")
    session, token = on_keys_page(server)
    response = post(session, server.page(f"/ui/keys/{admin_key.id}/revoke"), data={"_xsrf": token})
    assert_site_page(response, 403, "Not allowed")
    assert [k.is_active for k in server.services.auth.list_keys("admin")] == [True]


def test_a_stranger_cannot_post_to_a_page(server: Server) -> None:
    session = requests.Session()
    token = form_token(session, server)
    response = post(session, server.page("/ui/keys"), data={"_xsrf": token, "name": "x"})
    assert_site_page(response, 403, "Not allowed")


def test_pages_are_counted_in_the_metrics_by_route_template(server: Server) -> None:
    session = requests.Session()
    sign_in(session, server)
    get(session, server.page("/ui/keys"))
    get(session, server.page("/ui/no/such/page/123"))
    get(session, server.page("/ui/static/site.css"))
    routes = ("/ui/sign-in", "/ui/keys", "/ui/{}", "/ui/static/{}")

    def counted() -> str | None:  # a request is observed just after its answer is sent
        text = server.services.core.telemetry.exposition().decode()
        return text if all(f'route="{r}"' in text for r in routes) else None

    assert "no/such/page" not in wait_for("every page route counted", counted)


def test_signing_in_again_ends_the_previous_session(server: Server) -> None:
    session = requests.Session()
    sign_in(session, server)
    first = session.cookies[SESSION_COOKIE]
    # A sign-in form left open in another tab (a signed-in browser is sent past the form).
    assert get(session, server.page("/ui/sign-in")).headers["Location"] == "/ui/"
    fields = {"_xsrf": form_token(session, server, "/ui/"), "username": "admin"}
    again = post(session, server.page("/ui/sign-in"), data={**fields, "password": PASSWORD})
    assert again.status_code == 303 and session.cookies[SESSION_COOKIE] != first
    assert "Signed in as <strong>admin</strong>" in get(session, server.page("/ui/")).text
    replay = requests.Session()
    replay.cookies.set(SESSION_COOKIE, first, path="/ui")
    assert get(replay, server.page("/ui/")).status_code == 302
