"""``jobferry remote``'s errors: one line, non-zero, and plain about a wrong URL or key;
where the URL and key come from (options, environment, client file) and the 0600 rule."""

from __future__ import annotations

import http.server
import json
import os
import socket
import threading
from collections.abc import Iterator

import pytest

from tests.e2e.remote_helpers import SCRIPT, Remote, private_file, remote_daemon  # noqa: F401 (a fixture)
from tests.helpers import DEADLINE_S

pytestmark = pytest.mark.e2e


def one_line_error(result, *fragments: str) -> str:  # type: ignore[no-untyped-def]
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("jobferry: error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return str(lines[0])


@pytest.fixture
def not_jobferry() -> Iterator[str]:
    """A plain HTTP server (the standard library's), not a jobferry daemon."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(DEADLINE_S)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_wrong_url__connection_refused_says_so(remote: Remote) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    one_line_error(
        remote.run("jobs", url=url), f"cannot reach the daemon at {url}", "connection refused"
    )


def test_wrong_url__unknown_host_says_it_cannot_be_resolved(remote: Remote) -> None:
    url = "http://no-such-host.invalid:8080"
    one_line_error(remote.run("scripts", url=url), "cannot resolve host 'no-such-host.invalid'")


def test_wrong_url__another_http_server_is_not_a_jobferry_daemon(
    remote: Remote, not_jobferry: str
) -> None:
    for action in (("jobs",), ("status", "abc"), ("download", "abc")):
        one_line_error(
            remote.run(*action, url=not_jobferry),
            f"{not_jobferry} does not look like a jobferry daemon (HTTP 404",
            "check --url",
        )


def test_wrong_url__not_an_http_url_is_refused_before_any_request(remote: Remote) -> None:
    one_line_error(remote.run("jobs", url="ftp://example.org"), "is not an http:// or https:// URL")


def test_wrong_key__the_daemon_refusing_the_key_says_so(remote: Remote) -> None:
    for action in (("jobs",), ("scripts",), ("status", "abc"), ("submit", SCRIPT)):
        line = one_line_error(
            remote.run(*action, key="jf_not_a_key_at_all_0123456789abcdef"),
            f"the daemon at {remote.daemon.url} refused the API key (HTTP 40",
            "check --key-file",
        )
        assert "jf_not_a_key" not in line  # the key is never printed


def test_unknown_job__the_daemons_message_on_one_line(remote: Remote) -> None:
    for action in ("status", "wait", "logs", "download"):
        one_line_error(remote.run(action, "0123456789abcdef"), "(HTTP 404)")
    one_line_error(remote.run("cancel", "0123456789abcdef"), "(HTTP 404)")
    one_line_error(remote.run("cancel", "not/an id"), "(HTTP 400)")


def test_bad_input__the_daemons_field_messages(remote: Remote, tmp_path) -> None:
    one_line_error(remote.run("submit", "no-such-script"), "Unable to find script")
    one_line_error(
        remote.run("submit", SCRIPT, "--", "--mb", "many"),
        "The command is invalid: mb: Enter a whole number. (HTTP 400)",
    )
    one_line_error(remote.run("jobs", "--state", "sleeping"), "sleeping", "(HTTP 400)")
    missing = tmp_path / "missing.txt"
    one_line_error(remote.run("submit", SCRIPT, "--file", f"doc={missing}"), "not a readable file")


def test_key_file__mode_0600_works_and_0644_is_refused(remote: Remote, tmp_path) -> None:
    key_file = private_file(tmp_path / "key", remote.key + "\n")
    result = remote.run("jobs", "--json", "--key-file", str(key_file), key="")
    assert result.returncode == 0, result.stderr
    assert isinstance(json.loads(result.stdout), list)
    os.chmod(key_file, 0o644)
    line = one_line_error(
        remote.run("jobs", "--key-file", str(key_file), key=""), "has mode 0644", "chmod 600"
    )
    assert remote.key not in line


def test_client_file__url_and_key_from_it_and_its_mode_checked(remote: Remote) -> None:
    config = remote.home / ".config" / "jobferry" / "client.yml"
    private_file(config, f"url: {remote.daemon.url}\nkey: {remote.key}\n")
    try:
        result = remote.run("scripts", "--json", key="", url="")
        assert result.returncode == 0, result.stderr
        assert [s["slug"] for s in json.loads(result.stdout)] == [SCRIPT]
        os.chmod(config, 0o640)
        one_line_error(remote.run("scripts", key="", url=""), f"client file {config} has mode 0640")
        # Options and the environment come first: the file is not even read.
        assert remote.run("scripts", key=remote.key, url=remote.daemon.url).returncode == 0
    finally:
        config.unlink()


def test_missing_url_or_key__says_where_to_give_them(remote: Remote) -> None:
    one_line_error(remote.run("jobs", url=""), "no daemon URL: give --url, set $JOBFERRY_URL")
    one_line_error(remote.run("jobs", key=""), "no API key: give --key-file, set $JOBFERRY_KEY")


def test_url_option__overrides_the_environment(remote: Remote) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    result = remote.run("jobs", "--json", "--url", remote.daemon.url, url=url)
    assert result.returncode == 0, result.stderr
