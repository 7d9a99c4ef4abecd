"""Pages carry ``X-Request-Id`` as the APIs do (``jobferry.request_ids``): every answer
of the browser face, error pages and redirects included, over HTTP against a real
in-process server (the ``server`` fixture of ``test_web_app``)."""

from __future__ import annotations

import logging
import re

import pytest
import requests

from jobferry.daemon.logformat import ContextFilter
from tests.unit import test_web_app as web

#: The same running server as the other page tests.
server = web.server
Server = web.Server
FRESH_ID = re.compile(r"[0-9a-f]{16}")


def answers_of_every_kind(server: Server) -> dict[str, requests.Response]:
    """One answer of each kind the pages give, without a request id sent."""
    stranger = requests.Session()
    user = requests.Session()
    signed_in = web.sign_in(user, server)
    return {
        "page": web.get(stranger, server.page("/ui/sign-in")),
        "redirect to sign-in": web.get(stranger, server.page("/ui/keys")),
        "redirect after sign-in": signed_in,
        "static file": web.get(stranger, server.page("/ui/static/site.css")),
        "missing static file": web.get(stranger, server.page("/ui/static/nothing.css")),
        "404 page": web.get(user, server.page("/ui/no-such-page")),
        "403 page (no CSRF token)": web.post(stranger, server.page("/ui/sign-in"), data={}),
        "403 page (admin only)": web.get(user, server.page("/ui/admin-only")),
        "500 page": web.get(user, server.page("/ui/boom")),
        "signed-in page": web.get(user, server.page("/ui/keys")),
    }


def test_every_page_answer_carries_a_fresh_request_id(server: Server) -> None:
    answers = answers_of_every_kind(server)
    statuses = {name: r.status_code for name, r in answers.items()}
    assert statuses == {
        "page": 200,
        "redirect to sign-in": 302,
        "redirect after sign-in": 303,
        "static file": 200,
        "missing static file": 404,
        "404 page": 404,
        "403 page (no CSRF token)": 403,
        "403 page (admin only)": 403,
        "500 page": 500,
        "signed-in page": 200,
    }
    ids = {name: r.headers.get("X-Request-Id", "") for name, r in answers.items()}
    assert all(FRESH_ID.fullmatch(rid) for rid in ids.values()), ids
    assert len(set(ids.values())) == len(ids), ids  # one id per request


@pytest.mark.parametrize("path", ["/ui/sign-in", "/ui/keys", "/ui/no-such-page", "/ui/boom"])
def test_a_sane_proxy_id_is_kept_on_pages_and_an_insane_one_replaced(
    server: Server, path: str
) -> None:
    session = requests.Session()
    web.sign_in(session, server)
    sane = "0f8e2c3a-9b1d-4e5f-8a7b-6c5d4e3f2a1b"
    kept = web.get(session, server.page(path), headers={"X-Request-Id": sane})
    assert kept.headers["X-Request-Id"] == sane
    for insane in ("has space", "x" * 65, "semi;colon", "<script>"):
        replaced = web.get(session, server.page(path), headers={"X-Request-Id": insane})
        assert FRESH_ID.fullmatch(replaced.headers["X-Request-Id"]), insane


def test_a_pages_log_lines_carry_the_id_its_answer_sent(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    session = requests.Session()
    web.sign_in(session, server)
    caplog.handler.addFilter(ContextFilter())  # the daemon's filter: request id on records
    try:
        with caplog.at_level(logging.ERROR):
            response = web.get(session, server.page("/ui/boom"))
    finally:
        caplog.handler.removeFilter(caplog.handler.filters[-1])
    assert response.status_code == 500
    sent = response.headers["X-Request-Id"]
    failures = [r for r in caplog.records if r.exc_info and "hunter2" in str(r.exc_info[1])]
    assert failures, [r.getMessage() for r in caplog.records]
    assert {getattr(r, "request_id", None) for r in failures} == {sent}
