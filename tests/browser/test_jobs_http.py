"""The job pages over HTTP on a real daemon (no browser): who sees what (owner, another
user, an admin; the permalink), the live stream (SSE), downloads and previews, cancel
with CSRF, the list's filters and keyset pages, and bad input."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.browser.support import Account, Site, browser_session, xsrf
from tests.helpers import DEADLINE_S, ROOT, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

DEMO = ROOT / "tests" / "data" / "jobs" / "page_demo.py"
SLEEPER = ROOT / "tests" / "data" / "jobs" / "sleeper.py"


@pytest.fixture(scope="module")
def keys(site: Site) -> dict[str, str]:
    """API keys of the admin and of alice (to submit jobs as them)."""
    client = site.daemon.client()
    client.add_script("pagedemo", DEMO)
    client.add_script("sleeper", SLEEPER)
    alice_key = site.daemon.cli("key", "create", "alice").stdout.strip()
    return {"admin": site.admin_key, "alice": alice_key}


@pytest.fixture(scope="module")
def alice(site: Site, keys: dict[str, str]) -> requests.Session:
    return browser_session(site, site.alice)


@pytest.fixture(scope="module")
def admin(site: Site, keys: dict[str, str]) -> requests.Session:
    return browser_session(site, site.admin)


@pytest.fixture(scope="module")
def finished(site: Site, keys: dict[str, str]) -> dict[str, Any]:
    """A completed job of alice's with a CSV, a PNG and a text output."""
    client = site.daemon.client(keys["alice"])
    job_id = client.submit("pagedemo", "--rows 500", job_name="<script>alert(1)</script>")
    details = client.wait(job_id)
    assert details["status"] == "completed", details
    return details


def sse_events(response: requests.Response) -> Iterator[tuple[str, str, str | None]]:
    """(event, data, id) of a text/event-stream answer, and ``("comment", text, None)``."""
    event, data, event_id = "message", [], None
    for raw in response.iter_lines(decode_unicode=True):
        line = raw if isinstance(raw, str) else raw.decode()
        if line.startswith(":"):
            yield "comment", line[1:].strip(), None
        elif not line:
            if data:
                yield event, "\n".join(data), event_id
            event, data, event_id = "message", [], None
        else:
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "event":
                event = value
            elif field == "data":
                data.append(value)
            elif field == "id":
                event_id = value


def test_a_job_is_seen_by_its_owner_and_admins_only(
    site: Site, alice: requests.Session, admin: requests.Session, finished: dict[str, Any]
) -> None:
    page = alice.get(site.page(f"/ui/jobs/{finished['job_id']}"), timeout=DEADLINE_S)
    assert page.status_code == 200
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
    assert "<script>alert(1)</script>" not in page.text  # name, stdout, CSV cells: escaped
    assert "&lt;b&gt;not bold&lt;/b&gt;" in page.text
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    assert admin.get(site.page(f"/ui/jobs/{finished['job_id']}"), timeout=DEADLINE_S).ok
    # Another user: 404 (the job page, its permalink, its files, its stream, its cancel).
    site.daemon.cli("user", "create", "mallory")
    secret = "mallory's long password"
    site.daemon.cli("user", "passwd", "mallory", input=f"{secret}\n{secret}\n")
    mallory = browser_session(site, Account("mallory", secret))
    job_id = finished["job_id"]
    file_id = finished["assets"][0]["url"].rstrip("/").rsplit("/", 1)[-1]
    for path in (
        f"/ui/jobs/{job_id}",
        f"/ui/jobs/uuid/{finished['uuid']}",
        f"/ui/jobs/{job_id}/events",
        f"/ui/jobs/{job_id}/files/{file_id}",
    ):
        answer = mallory.get(site.page(path), timeout=DEADLINE_S)
        assert answer.status_code == 404, path
        assert "Page not found · jobferry" in answer.text
    token = xsrf(mallory, site, "/ui/jobs")
    answer = mallory.post(
        site.page(f"/ui/jobs/{job_id}/cancel"), data={"_xsrf": token}, timeout=DEADLINE_S
    )
    assert answer.status_code == 404
    listed = mallory.get(site.page("/ui/jobs"), timeout=DEADLINE_S).text
    assert job_id not in listed
    rows = mallory.get(site.page(f"/ui/jobs/rows?id={job_id}"), timeout=DEADLINE_S).json()
    assert rows == {"jobs": []}


def test_the_permalink_is_a_read_only_page_for_those_who_may_see_the_job(
    site: Site, alice: requests.Session, admin: requests.Session, finished: dict[str, Any]
) -> None:
    path = f"/ui/jobs/uuid/{finished['uuid']}"
    for session in (alice, admin):
        page = session.get(site.page(path), timeout=DEADLINE_S)
        assert page.status_code == 200
        assert 'id="read-only"' in page.text and 'id="cancel-job"' not in page.text
        assert f"/ui/jobs/{finished['job_id']}" in page.text
    anonymous = requests.get(site.page(path), timeout=DEADLINE_S, allow_redirects=False)
    assert anonymous.status_code == 302
    assert anonymous.headers["Location"].startswith("/ui/sign-in?next=")
    unknown = alice.get(site.page("/ui/jobs/uuid/00000000-0000-4000-8000-000000000000"))
    assert unknown.status_code == 404


def test_downloads_are_attachments_and_previews_are_bounded(
    site: Site, alice: requests.Session, finished: dict[str, Any]
) -> None:
    job_id = finished["job_id"]
    assets = {a["name"]: a for a in finished["assets"]}
    page = alice.get(site.page(f"/ui/jobs/{job_id}"), timeout=DEADLINE_S).text
    for name in ("result.csv", "plot.png", "notes.txt"):
        file_id = assets[name]["url"].rstrip("/").rsplit("/", 1)[-1]
        answer = alice.get(site.page(f"/ui/jobs/{job_id}/files/{file_id}"), timeout=DEADLINE_S)
        assert answer.status_code == 200
        assert answer.headers["Content-Disposition"] == f"attachment; filename*=UTF-8''{name}"
        assert answer.headers["Content-Type"] == "application/octet-stream"
        assert answer.headers["X-Content-Type-Options"] == "nosniff"
        api = site.daemon.client().get(f"/api/jobs/v1/{job_id}/assets/{file_id}/")
        assert answer.content == api.content and len(answer.content) == assets[name]["size"]
        assert f"/ui/jobs/{job_id}/files/{file_id}" in page
    # The CSV is a table of its first rows (500 rows written, 100 shown, escaped).
    assert page.count("<td>row") == 99 and "<td>&lt;i&gt;98&lt;/i&gt;</td>" in page
    assert "<td>row99</td>" not in page and "Only the beginning is shown" in page
    assert "plain notes &lt;img src=x&gt;" in page
    # The image: inline, its own type, nosniff; other files have no inline view.
    png_id = assets["plot.png"]["url"].rstrip("/").rsplit("/", 1)[-1]
    assert f'src="/ui/jobs/{job_id}/files/{png_id}/view"' in page
    image = alice.get(site.page(f"/ui/jobs/{job_id}/files/{png_id}/view"), timeout=DEADLINE_S)
    assert image.status_code == 200 and image.headers["Content-Type"] == "image/png"
    assert image.headers["Content-Disposition"] == "inline"
    assert image.headers["X-Content-Type-Options"] == "nosniff"
    assert image.content.startswith(b"\x89PNG")
    text_id = assets["notes.txt"]["url"].rstrip("/").rsplit("/", 1)[-1]
    refused = alice.get(site.page(f"/ui/jobs/{job_id}/files/{text_id}/view"))
    assert refused.status_code == 404
    ranged = alice.get(
        site.page(f"/ui/jobs/{job_id}/files/{png_id}"), headers={"Range": "bytes=0-7"}
    )
    assert ranged.status_code == 206 and ranged.content == b"\x89PNG\r\n\x1a\n"


def test_the_stream_delivers_lines_while_the_job_runs_and_ends_with_it(
    site: Site, keys: dict[str, str], alice: requests.Session, tmp_path: Path
) -> None:
    go = tmp_path / "go"
    client = site.daemon.client(keys["alice"])
    job_id = client.submit("pagedemo", f"--go {go}", job_name="streamed")
    url = site.page(f"/ui/jobs/{job_id}/events")
    seen: list[tuple[str, dict[str, Any]]] = []
    with alice.get(url, stream=True, timeout=DEADLINE_S) as answer:
        assert answer.status_code == 200
        assert answer.headers["Content-Type"].startswith("text/event-stream")
        text, last_id = "", ""
        for event, data, event_id in sse_events(answer):
            if event == "comment":
                continue
            body = json.loads(data)
            seen.append((event, body))
            if event == "log":
                assert event_id and re.fullmatch(r"\d+:\d+", event_id)
                last_id = event_id
                if body["stream"] == "stdout":
                    text += body["text"]
                    if "first line" in text and not go.exists():
                        # Seen while the job waits: only now may it go on.
                        assert client.get(f"/api/jobs/v1/{job_id}/status/").json()["status"] in (
                            "running",
                            "queued",
                            "submitted",
                        )
                        go.write_text("go")
            if event == "end":
                break
    assert go.exists(), seen
    assert "go-ahead seen" in text and text.rstrip().endswith("done")
    assert seen[-1] == ("end", {"state": "ok"})
    states = [body["state"] for event, body in seen if event == "state"]
    assert states[-1] == "ok"
    # Reconnecting from the last id (as EventSource does) sends nothing twice.
    with alice.get(
        url, stream=True, headers={"Last-Event-ID": last_id}, timeout=DEADLINE_S
    ) as again:
        events = [e for e, _, _ in sse_events(again)]
    assert events == ["state", "end"]


def test_cancel_needs_the_form_token_and_ends_the_job_revoked(
    site: Site, keys: dict[str, str], alice: requests.Session
) -> None:
    client = site.daemon.client(keys["alice"])
    job_id = client.submit("sleeper", "300", job_name="long")
    page = f"/ui/jobs/{job_id}"
    wait_for("running", lambda: 'data-state="running"' in alice.get(site.page(page)).text)
    refused = alice.post(site.page(f"{page}/cancel"), timeout=DEADLINE_S, allow_redirects=False)
    assert refused.status_code == 403
    token = xsrf(alice, site, page)
    answer = alice.post(
        site.page(f"{page}/cancel"),
        data={"_xsrf": token},
        timeout=DEADLINE_S,
        allow_redirects=False,
    )
    assert answer.status_code == 303 and answer.headers["Location"] == page
    wait_for("revoked", lambda: ">REVOKED<" in alice.get(site.page(page)).text)
    assert client.get(f"/api/jobs/v1/{job_id}/status/").json()["status"] == "REVOKED"


def test_the_list_filters_and_pages_with_stable_cursors(
    site: Site, keys: dict[str, str], alice: requests.Session, admin: requests.Session
) -> None:
    client = site.daemon.client(keys["alice"])
    ids = [client.submit("sleeper", "0", job_name=f"paged {i}") for i in range(55)]
    for job_id in ids:
        client.wait(job_id)
    first = alice.get(site.page("/ui/jobs?script=sleeper&state=ok"), timeout=DEADLINE_S)
    assert first.status_code == 200
    shown = re.findall(r'data-job-id="([0-9a-f]+)"', first.text)
    assert len(shown) == 50 and shown[0] == ids[-1]
    older = re.search(r'id="older-page" rel="next" href="([^"]+)"', first.text)
    assert older and 'id="newer-page"' not in first.text
    second = alice.get(site.page(older.group(1).replace("&amp;", "&")), timeout=DEADLINE_S)
    rest = re.findall(r'data-job-id="([0-9a-f]+)"', second.text)
    assert shown + rest == list(reversed(ids))[: len(shown) + len(rest)]
    assert len(rest) >= 5 and 'id="newer-page"' in second.text
    newer = re.search(r'id="newer-page" rel="prev" href="([^"]+)"', second.text)
    assert newer
    back = alice.get(site.page(newer.group(1).replace("&amp;", "&")), timeout=DEADLINE_S)
    assert re.findall(r'data-job-id="([0-9a-f]+)"', back.text) == shown
    # Filters: a state, a date range, a destination; an admin's user filter.
    none = alice.get(site.page("/ui/jobs?script=sleeper&state=running&until=2000-01-01"))
    assert 'data-job-id="' not in none.text and 'id="no-jobs"' in none.text
    assert 'data-job-id="' not in alice.get(site.page("/ui/jobs?destination=nowhere")).text
    everyone = admin.get(site.page("/ui/jobs?user=alice&script=sleeper"), timeout=DEADLINE_S)
    assert re.findall(r'data-job-id="([0-9a-f]+)"', everyone.text)[0] == ids[-1]
    assert 'class="job-user">alice<' in everyone.text
    assert 'data-job-id="' not in admin.get(site.page("/ui/jobs?user=admin&script=sleeper")).text
    # The live refresh's rows: states as JSON.
    rows = alice.get(site.page(f"/ui/jobs/rows?id={ids[0]}&id=ffffffffffffffff")).json()
    assert rows["jobs"] == [
        {
            "id": ids[0],
            "state": "ok",
            "label": "completed",
            "badge": "ok",
            "exit_code": 0,
            "terminal": True,
        }
    ]


def test_bad_filters_and_cursors_answer_400_pages_not_traces(
    site: Site, alice: requests.Session
) -> None:
    for query, field in (("state=sideways", "f-state-error"), ("from=yesterday", "f-from-error")):
        answer = alice.get(site.page(f"/ui/jobs?{query}"), timeout=DEADLINE_S)
        assert answer.status_code == 400 and f'id="{field}"' in answer.text
    damaged = alice.get(site.page("/ui/jobs?older=%%%not-a-cursor"), timeout=DEADLINE_S)
    assert damaged.status_code == 400 and "This page link is damaged" in damaged.text
    assert alice.get(site.page("/ui/jobs/ffffffffffffffff")).status_code == 404
    assert alice.get(site.page("/ui/jobs/ffffffffffffffff/events")).status_code == 404


def test_pages_need_a_session(site: Site) -> None:
    for path in ("/ui/jobs", "/ui/jobs/0123456789abcdef", "/ui/jobs/0123456789abcdef/events"):
        answer = requests.get(site.page(path), timeout=DEADLINE_S, allow_redirects=False)
        assert answer.status_code == 302 and "/ui/sign-in?next=" in answer.headers["Location"]
    answer = requests.post(site.page("/ui/jobs/0123456789abcdef/cancel"), timeout=DEADLINE_S)
    assert answer.status_code == 403


def test_streams_are_bounded_per_user_freed_on_disconnect_and_send_heartbeats(
    site: Site, keys: dict[str, str], alice: requests.Session
) -> None:
    client = site.daemon.client(keys["alice"])
    job_id = client.submit("sleeper", "300", job_name="watched")
    url = site.page(f"/ui/jobs/{job_id}/events")
    opened = []
    try:
        readers = []
        for _ in range(8):  # MAX_STREAMS_PER_USER
            stream = alice.get(url, stream=True, timeout=DEADLINE_S)
            assert stream.status_code == 200
            opened.append(stream)
            readers.append(sse_events(stream))
            assert next(e for e, _, _ in readers[-1] if e == "state")
        refused = alice.get(url, timeout=DEADLINE_S)
        assert refused.status_code == 429 and refused.headers["Retry-After"] == "5"
        # The first stream stays quiet (the job prints nothing more): a heartbeat comes.
        assert next(d for e, d, _ in readers[0] if e == "comment") == "heartbeat"
        opened.pop().close()  # a page closed: its slot is given back

        def reopened() -> bool:
            stream = alice.get(url, stream=True, timeout=DEADLINE_S)
            opened.append(stream)
            return stream.status_code == 200

        wait_for("a free stream", reopened)
    finally:
        for stream in opened:
            stream.close()
        client.session.delete(f"{site.url}/api/jobs/{job_id}", timeout=DEADLINE_S)
