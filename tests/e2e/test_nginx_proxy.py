"""The daemon behind a real nginx (Debian's), configured by ``conf/nginx/jobferry.conf``.

Each test starts its own nginx master process on free 127.0.0.1 ports (``-p`` a
temporary prefix, not the system service; stopped by its pid) with the example site
file, its ports, certificate and upstream substituted, in front of a daemon with
``server.xheaders: true``. Clients speak HTTPS to nginx; nginx speaks HTTP to the
daemon. What the daemon hands out must name the proxy (scheme, host and port as the
client used them), never the daemon's own address.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from jobferry.config import ServerConfig
from tests.helpers import DEADLINE_S, JOB_SCRIPTS, Client, DaemonProcess, wait_for
from tests.services import require

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "conf" / "nginx" / "jobferry.conf"


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def substitute(text: str, old: str, new: str) -> str:
    """Replace *old* once; the example must still contain it (else this test is stale)."""
    assert text.count(old) == 1, f"{old!r} is not in {EXAMPLE} exactly once"
    return text.replace(old, new)


class Nginx:
    """An nginx master process of its own, on the example's site configuration."""

    def __init__(self, prefix: Path, upstream_port: int) -> None:
        self.prefix = prefix
        self.upstream_port = upstream_port
        self.proc: subprocess.Popen[bytes] | None = None
        self.http_port = self.tls_port = 0
        self.cert = prefix / "cert.pem"
        key = prefix / "key.pem"
        prefix.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
             "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
             "-keyout", str(key), "-out", str(self.cert)],
            check=True, capture_output=True, timeout=DEADLINE_S,
        )  # fmt: skip
        self.key = key

    def site(self) -> str:
        text = EXAMPLE.read_text()
        text = substitute(text, "server 127.0.0.1:8080;", f"server 127.0.0.1:{self.upstream_port};")
        text = substitute(text, "    listen [::]:80;\n", "")
        text = substitute(text, "    listen [::]:443 ssl;\n", "")
        text = substitute(text, "listen 80;", f"listen 127.0.0.1:{self.http_port};")
        text = substitute(text, "listen 443 ssl;", f"listen 127.0.0.1:{self.tls_port} ssl;")
        text = re.sub(r"ssl_certificate\s+\S+;", f"ssl_certificate {self.cert};", text)
        return re.sub(r"ssl_certificate_key\s+\S+;", f"ssl_certificate_key {self.key};", text)

    def main_conf(self) -> str:
        p = self.prefix
        temps = "\n".join(
            f"    {kind}_temp_path {p}/{kind};"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        # As root, workers would switch to nobody, who cannot enter pytest's 0700 dirs.
        user = "user root;\n" if os.geteuid() == 0 else ""
        return (
            f"{user}worker_processes 1;\nevents {{ worker_connections 256; }}\n"
            f"http {{\n    access_log {p}/access.log;\n{temps}\n"
            f"    include {p}/site.conf;\n}}\n"
        )

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.tls_port}"

    def start(self) -> Nginx:
        for _ in range(3):  # a free port may be taken between the probe and nginx's bind
            self.http_port, self.tls_port = free_ports(2)
            (self.prefix / "site.conf").write_text(self.site())
            (self.prefix / "nginx.conf").write_text(self.main_conf())
            log = self.prefix / "error.log"
            self.proc = subprocess.Popen(
                ["nginx", "-p", str(self.prefix), "-c", str(self.prefix / "nginx.conf"),
                 "-e", str(log), "-g", f"daemon off; pid {self.prefix}/nginx.pid;"],
                stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
            )  # fmt: skip
            if wait_for("nginx to listen or exit", self._listening_or_exited):
                if self.proc.poll() is None:
                    return self
            if "Address already in use" not in log.read_text():
                break
        raise AssertionError(f"nginx did not start: {(self.prefix / 'error.log').read_text()}")

    def _listening_or_exited(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            return True
        try:
            socket.create_connection(("127.0.0.1", self.tls_port), timeout=5).close()
            return True
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGQUIT)  # graceful: the workers finish, then exit
            try:
                self.proc.wait(DEADLINE_S)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(DEADLINE_S)


def proxied_stack(tmp_path: Path, base_url: bool) -> Iterator[tuple[DaemonProcess, Nginx]]:
    """A daemon with xheaders (and base_url = the proxy's URL if *base_url*) behind nginx."""
    require("nginx")
    # nginx needs the daemon's port, the daemon (with base_url) nginx's: nginx's
    # ports are chosen first; the daemon is started before nginx serves.
    daemon = DaemonProcess(tmp_path / "data", {"server": {"xheaders": True}})
    daemon.start()
    nginx = Nginx(tmp_path / "nginx", int(daemon.url.rsplit(":", 1)[1]))
    try:
        nginx.start()
        if base_url:
            daemon.stop()
            daemon = DaemonProcess(
                tmp_path / "data",
                {"server": {"xheaders": True, "base_url": nginx.url, "port": nginx.upstream_port}},
            )
            daemon.start()
        yield daemon, nginx
    finally:
        nginx.stop()
        daemon.stop()


@pytest.fixture
def behind_nginx(tmp_path: Path) -> Iterator[tuple[DaemonProcess, Nginx]]:
    yield from proxied_stack(tmp_path, base_url=False)


@pytest.fixture
def behind_nginx_with_base_url(tmp_path: Path) -> Iterator[tuple[DaemonProcess, Nginx]]:
    yield from proxied_stack(tmp_path, base_url=True)


def through(daemon: DaemonProcess, nginx: Nginx) -> Client:
    client = Client(nginx.url, daemon.admin_key)
    client.session.verify = str(nginx.cert)
    # Else REQUESTS_CA_BUNDLE (and proxy variables) of the environment would win.
    client.session.trust_env = False
    return client


def run_proxied(client: Client, payload: bytes) -> tuple[str, dict[str, Any]]:
    client.add_script("proxied", JOB_SCRIPTS / "proxied.py")
    job_id = client.submit("proxied", "--infile blob", files={"blob": ("blob.bin", payload)})
    details = client.wait(job_id)
    assert details["status"] == "completed", details
    return job_id, details


def test_nginx_example__allows_the_daemons_largest_upload() -> None:
    text = EXAMPLE.read_text()
    found = re.search(r"client_max_body_size\s+(\d+)m;", text)
    assert found and int(found.group(1)) == ServerConfig().max_upload_mb
    for directive in ("proxy_request_buffering off;", "proxy_buffering off;"):
        assert directive in text


def test_behind_nginx__asset_links_name_the_proxy_and_files_pass_intact(
    behind_nginx: tuple[DaemonProcess, Nginx],
) -> None:
    daemon, nginx = behind_nginx
    client = through(daemon, nginx)
    payload = os.urandom(8 * 1024 * 1024 + 5)
    job_id, details = run_proxied(client, payload)
    asset = {a["name"]: a for a in details["assets"]}["copy.bin"]
    # Scheme, host and port as the client used them (X-Forwarded-Proto, Host).
    assert asset["url"].startswith(f"{nginx.url}/api/jobs/v1/"), asset["url"]
    download = client.session.get(asset["url"], timeout=DEADLINE_S)
    assert download.status_code == 200 and download.content == payload
    assert hashlib.sha256(download.content).hexdigest() == asset["sha256"]
    part = client.session.get(asset["url"], headers={"Range": "bytes=100-199"}, timeout=30)
    assert part.status_code == 206 and part.content == payload[100:200]
    # The same job asked directly names the daemon: the links follow the request.
    direct = daemon.client().get(f"/api/jobs/v1/{job_id}/details/").json()
    assert direct["assets"][0]["url"].startswith(daemon.url + "/"), direct["assets"]
    # Without base_url, jobs are given the daemon's own address (README: set it).
    assert details["stdout"] == f"JOBFERRY_URL={daemon.url}\n"

    # Galaxy's links are relative: they resolve against the proxy.
    client.session.headers["x-api-key"] = daemon.admin_key
    job = client.get(f"/api/jobs/{job_id}").json()
    dataset = client.get(f"/api/datasets/{job['outputs']['copy.bin']['id']}").json()
    assert dataset["download_url"].startswith("/api/"), dataset
    assert client.get(dataset["download_url"]).content == payload

    # Plain HTTP on the proxy only redirects to HTTPS.
    plain = requests.get(
        f"http://127.0.0.1:{nginx.http_port}/api/jobs/v1/x/status/",
        allow_redirects=False,
        timeout=DEADLINE_S,
    )
    assert plain.status_code == 301
    assert plain.headers["Location"] == "https://127.0.0.1/api/jobs/v1/x/status/"


def test_behind_nginx__with_base_url_jobs_get_the_proxy_as_jobferry_url(
    behind_nginx_with_base_url: tuple[DaemonProcess, Nginx],
) -> None:
    daemon, nginx = behind_nginx_with_base_url
    client = through(daemon, nginx)
    payload = b"\x00\x01 through nginx \xff" * 1000
    _, details = run_proxied(client, payload)
    assert details["stdout"] == f"JOBFERRY_URL={nginx.url}\n"
    asset = details["assets"][0]
    assert asset["url"].startswith(f"{nginx.url}/api/jobs/v1/"), asset
    assert client.session.get(asset["url"], timeout=DEADLINE_S).content == payload
