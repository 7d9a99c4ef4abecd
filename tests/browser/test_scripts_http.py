"""The scripts pages over plain HTTP against a real daemon: sign-in and CSRF
required, search on the server, validation errors next to their fields with
nothing stored, a submission that runs with the form's values and files, rerun
prefill with kept files, hostile values escaped."""

from __future__ import annotations

import http.client
import json
import re
from collections.abc import Iterator
from html import unescape
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests

from tests.browser.support import XSRF_FIELD, Site, browser_session
from tests.helpers import DEADLINE_S

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


@pytest.fixture
def alice(site: Site) -> Iterator[requests.Session]:
    with browser_session(site, site.alice) as session:
        yield session


def get(session: requests.Session, url: str) -> requests.Response:
    return session.get(url, timeout=DEADLINE_S, allow_redirects=False)


def param_ids(page: str) -> dict[str, str]:
    """Each parameter's dest -> its form field name, read from the page."""
    found = re.findall(r'data-param="([^"]+)".*?name="(p\d+)"', page, flags=re.S)
    return {dest: name for dest, name in found}


def submit(
    session: requests.Session,
    site: Site,
    slug: str,
    fields: dict[str, Any],
    files: list[tuple[str, tuple[str, bytes]]] | None = None,
    *,
    query: str = "",
    token: bool = True,
) -> requests.Response:
    page = get(session, site.page(f"/ui/scripts/{slug}{query}"))
    assert page.status_code == 200, page.text
    data: list[tuple[str, str]] = []
    if token:
        found = XSRF_FIELD.search(page.text)
        assert found
        data.append(("_xsrf", found.group(1)))
    version = re.search(r'name="version_id" value="([^"]+)"', page.text)
    assert version
    data.append(("version_id", version.group(1)))
    for key, value in fields.items():
        for one in value if isinstance(value, list) else [value]:
            data.append((key, one))
    return session.post(
        site.page(f"/ui/scripts/{slug}"),
        data=data,
        files=files or [("__none__", ("", b""))],  # always multipart, as a browser sends it
        timeout=DEADLINE_S,
        allow_redirects=False,
    )


def job_count(site: Site) -> int:
    listed = site.daemon.cli("job", "list", "--json", "--limit", "1000").stdout
    return len(json.loads(listed))


def wait_details(site: Site, job_id: str) -> dict[str, Any]:
    return site.daemon.client().wait(job_id, timeout_s=DEADLINE_S)


def field_error(page: str, name: str) -> str:
    index = name[1:]
    found = re.search(rf'<p class="field-error" id="param-{index}-error">(.*?)</p>', page, re.S)
    assert found, page
    return unescape(found.group(1))


def test_a_stranger_is_sent_to_sign_in_and_cannot_post(site: Site, demo: str) -> None:
    stranger = requests.Session()
    for path in ("/ui/scripts", f"/ui/scripts/{demo}", f"/ui/scripts/{demo}?rerun=abc"):
        answer = get(stranger, site.page(path))
        assert answer.status_code == 302
        assert answer.headers["Location"].startswith("/ui/sign-in?next=%2Fui%2Fscripts")
    refused = stranger.post(
        site.page(f"/ui/scripts/{demo}"),
        files={"p0": ("a.txt", b"x" * 1000)},
        timeout=DEADLINE_S,
        allow_redirects=False,
    )
    assert refused.status_code == 403
    assert "<title>" in refused.text


def test_the_form_needs_its_csrf_token(site: Site, demo: str, alice: requests.Session) -> None:
    before = job_count(site)
    answer = submit(alice, site, demo, {"job_name": "no token"}, [("p0", ("a", b"a"))], token=False)
    assert answer.status_code == 403
    assert "This form has expired or came from another site" in answer.text
    assert job_count(site) == before


def test_the_catalogue_lists_scripts_by_group_and_searches_on_the_server(
    site: Site, demo: str, alice: requests.Session
) -> None:
    page = get(alice, site.page("/ui/scripts")).text
    assert re.search(r"<h2 id=\"group-0\">Testing</h2>.*<h2 id=\"group-1\">Text</h2>", page, re.S)
    assert "<title>Scripts · jobferry</title>" in page
    found = get(alice, site.page("/ui/scripts?q=STYLE+lines")).text
    assert f'href="/ui/scripts/{demo}"' in found and "every action" not in found
    assert "1 script match" in found
    nothing = get(alice, site.page("/ui/scripts?q=%3Cscript%3Ezzz")).text
    assert 'id="no-scripts"' in nothing and "&lt;script&gt;zzz" in nothing


def test_the_form_has_an_input_for_each_parameter(
    site: Site, demo: str, alice: requests.Session
) -> None:
    page = get(alice, site.page(f"/ui/scripts/{demo}")).text
    assert "<title>line styler · jobferry</title>" in page
    assert "Count the lines of a file, in style." in page
    ids = param_ids(page)
    assert re.search(rf'name="{ids["data"]}" type="file" required', page)
    assert re.search(rf'name="{ids["extra"]}" type="file" multiple', page)
    assert re.search(rf'name="{ids["times"]}" type="number" step="1" value="2"', page)
    assert re.search(rf'name="{ids["ratio"]}" type="number" step="any" value="0.5"', page)
    assert re.search(rf'<select id="param-\d+" name="{ids["color"]}"', page)
    assert '<option value="green" selected>green</option>' in page
    assert re.search(rf'name="{ids["shout"]}" type="checkbox"', page)
    assert re.search(rf'<textarea id="param-\d+" name="{ids["words"]}"', page)
    assert "<legend>style</legend>" in page
    assert "Not together with csv." in page
    assert 'enctype="multipart/form-data"' in page


def test_invalid_values_are_shown_next_to_their_fields_and_nothing_is_stored(
    site: Site, demo: str, alice: requests.Session
) -> None:
    ids = param_ids(get(alice, site.page(f"/ui/scripts/{demo}")).text)
    before = job_count(site)
    uploads = list((site.daemon.data_dir / "tmp").rglob("*"))
    answer = submit(
        alice,
        site,
        demo,
        {
            "job_name": "",
            ids["times"]: "two",
            ids["color"]: "purple",
            ids["json"]: "on",
            ids["csv"]: "on",
            ids["label"]: "<b>kept</b>",
        },
    )
    assert answer.status_code == 400
    page = answer.text
    assert field_error(page, ids["data"]) == "This field is required."
    assert field_error(page, ids["times"]) == "Enter a whole number."
    assert "not one of the available choices" in field_error(page, ids["color"])
    assert field_error(page, ids["json"]) == "Give only one of: json, csv."
    assert field_error(page, ids["csv"]) == "Give only one of: json, csv."
    assert 'aria-invalid="true"' in page
    assert 'value="&lt;b&gt;kept&lt;/b&gt;"' in page  # what was typed is kept, escaped
    assert job_count(site) == before
    assert list((site.daemon.data_dir / "tmp").rglob("*")) == uploads

    # The service's own checks (the job name) come back next to their field too.
    answer = submit(alice, site, demo, {"job_name": " "}, [(ids["data"], ("d.txt", b"d"))])
    assert answer.status_code == 400
    assert '<p class="field-error" id="job_name-error">This field is required.</p>' in answer.text
    assert "choose them again" in answer.text
    assert job_count(site) == before


def test_a_valid_form_runs_the_job_with_its_values_and_files(
    site: Site, demo: str, alice: requests.Session
) -> None:
    ids = param_ids(get(alice, site.page(f"/ui/scripts/{demo}")).text)
    hostile = "it's $(id); `reboot` --json"
    answer = submit(
        alice,
        site,
        demo,
        {
            "job_name": "over http",
            ids["times"]: "3",
            ids["color"]: "blue",
            ids["shout"]: "on",
            ids["label"]: hostile,
            ids["words"]: "one\ntwo words",
        },
        [
            (ids["data"], ("data.txt", b"first\nsecond\n")),
            (ids["extra"], ("e1.txt", b"E1")),
            (ids["extra"], ("e2.txt", b"E2")),
        ],
    )
    assert answer.status_code == 303, answer.text
    job_id = answer.headers["Location"].removeprefix("/ui/jobs/")
    assert re.fullmatch(r"[0-9a-f]+", job_id)
    details = wait_details(site, job_id)
    assert details["status"] == "completed", details
    ran = json.loads(details["stdout"])
    assert ran["data"] == "first\nsecond\n" and ran["extra"] == ["E1", "E2"]
    assert ran["times"] == 3 and ran["color"] == "blue" and ran["shout"] is True
    assert ran["label"] == hostile and ran["json"] is False
    assert ran["words"] == ["one", "two words"]
    assert details["job_name"] == "over http"


def test_rerun_fills_the_form_and_reuses_the_files(
    site: Site, demo: str, alice: requests.Session
) -> None:
    ids = param_ids(get(alice, site.page(f"/ui/scripts/{demo}")).text)
    first = submit(
        alice,
        site,
        demo,
        {"job_name": "<script>alert(1)</script>", ids["times"]: "7", ids["label"]: "<i>x</i>"},
        [(ids["data"], ('"><img src=x onerror=alert(1)>.txt', b"kept bytes\n"))],
    )
    assert first.status_code == 303, first.text
    job_id = first.headers["Location"].removeprefix("/ui/jobs/")
    wait_details(site, job_id)

    page = get(alice, site.page(f"/ui/scripts/{demo}?rerun={job_id}")).text
    assert "<script>alert(1)</script>" not in page and "<img src=x" not in page
    assert 'value="&lt;script&gt;alert(1)&lt;/script&gt;"' in page
    assert re.search(rf'name="{ids["times"]}" type="number" step="1" value="7"', page)
    keep = re.search(
        rf'name="keep-{ids["data"]}" type="checkbox" value="([0-9a-f]+)" checked', page
    )
    assert keep, page
    assert "img_src=x_onerror=alert_1_.txt</span>" in page  # the stored (safe) name

    again = submit(
        alice,
        site,
        demo,
        {
            "job_name": "rerun",
            ids["times"]: "8",
            f"keep-{ids['data']}": keep.group(1),
            "rerun": job_id,
        },
        query=f"?rerun={job_id}",
    )
    assert again.status_code == 303, again.text
    details = wait_details(site, again.headers["Location"].removeprefix("/ui/jobs/"))
    ran = json.loads(details["stdout"])
    assert ran["data"] == "kept bytes\n" and ran["times"] == 8 and ran["label"] is None


def test_someone_elses_job_cannot_be_rerun(site: Site, demo: str, alice: requests.Session) -> None:
    client = site.daemon.client()
    admins = client.submit(demo, "-- data", files={"data": ("a.txt", b"secret")})
    client.wait(admins)
    assert get(alice, site.page(f"/ui/scripts/{demo}?rerun={admins}")).status_code == 404
    ids = param_ids(get(alice, site.page(f"/ui/scripts/{demo}")).text)
    stolen = submit(
        alice, site, demo, {"job_name": "x", "rerun": admins, f"keep-{ids['data']}": "ab12"}
    )
    assert stolen.status_code == 404


def test_the_version_picker_shows_and_runs_the_chosen_version(
    site: Site, alice: requests.Session, tmp_path: Path
) -> None:
    script = tmp_path / "versioned.py"
    first = "import argparse\np = argparse.ArgumentParser()\np.add_argument('--old-opt')\n"
    script.write_text(first + "print('old', p.parse_args())\n")
    client = site.daemon.client()
    old = client.add_script("versioned", script, group="Versions")
    script.write_text(first.replace("old-opt", "new-opt") + "print('new', p.parse_args())\n")
    client.add_script("versioned", script, group="Versions")
    slug = old["slug"]

    page = get(alice, site.page(f"/ui/scripts/{slug}")).text
    assert 'data-param="new_opt"' in page and 'data-param="old_opt"' not in page  # the default
    options = re.findall(r'<option value="([0-9a-f]+)"( selected)?>([^<]*)</option>', page)
    assert len(options) == 2, page
    older = next(value for value, selected, _ in options if not selected)
    page = get(alice, site.page(f"/ui/scripts/{slug}?version={older}")).text
    assert 'data-param="old_opt"' in page and 'data-param="new_opt"' not in page
    ids = param_ids(page)
    answer = submit(
        alice, site, slug, {"job_name": "old one", ids["old_opt"]: "x y"}, query=f"?version={older}"
    )
    assert answer.status_code == 303, answer.text
    details = wait_details(site, answer.headers["Location"].removeprefix("/ui/jobs/"))
    assert details["stdout"].startswith("old Namespace(old_opt='x y')"), details


def test_the_apis_own_checks_come_back_next_to_the_parameter(
    site: Site, demo: str, alice: requests.Session
) -> None:
    ids = param_ids(get(alice, site.page(f"/ui/scripts/{demo}")).text)
    before = job_count(site)
    answer = submit(
        alice,
        site,
        demo,
        {"job_name": "escape", ids["output"]: "../../etc/passwd"},
        [(ids["data"], ("d.txt", b"d"))],
    )
    assert answer.status_code == 400
    assert field_error(answer.text, ids["output"]) == (
        "Output file names must be relative paths inside the job directory."
    )
    assert job_count(site) == before


def test_a_version_that_is_not_there_is_a_404_page(
    site: Site, demo: str, alice: requests.Session
) -> None:
    answer = get(alice, site.page(f"/ui/scripts/{demo}?version=0123abcd"))
    assert answer.status_code == 404 and "<title>Page not found · jobferry</title>" in answer.text
    assert get(alice, site.page("/ui/scripts/no-such-script")).status_code == 404


def declared_body_answer(site: Site, slug: str, length: int, cookie: str = "") -> int:
    """The status of a POST that declares *length* body bytes and sends none: only
    an answer given before reading the body comes back at all."""
    parts = urlsplit(site.url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=DEADLINE_S)
    try:
        connection.putrequest("POST", f"/ui/scripts/{slug}")
        connection.putheader("Content-Type", "multipart/form-data; boundary=x")
        connection.putheader("Content-Length", str(length))
        if cookie:
            connection.putheader("Cookie", cookie)
        connection.endheaders()
        return connection.getresponse().status
    finally:
        connection.close()


def test_only_a_signed_in_users_body_is_read_and_only_up_to_the_cap(
    site: Site, demo: str, alice: requests.Session
) -> None:
    assert declared_body_answer(site, demo, 10**9) == 403  # a stranger: refused unread
    cookie = "; ".join(f"{c.name}={c.value}" for c in alice.cookies)
    assert declared_body_answer(site, demo, 10**12, cookie) == 413  # over server.max_upload_mb
