"""``GET /metrics`` of a real daemon: jobs through both faces move the right series, with
bounded labels; access on loopback, with the scrape token, with an admin key; absent when
disabled; the sample Prometheus config and Grafana dashboard name only exported metrics."""

from __future__ import annotations

import json
import re
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import requests
import yaml
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import insert, select

from jobferry.store.engine import make_engine
from jobferry.store.models import Job, Node, User
from tests.helpers import DEADLINE_S, JOB_SCRIPTS, Client, DaemonProcess, running_daemon, wait_for

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "scrape-token-for-tests-0123456789"
#: A client that is not on loopback, as a proxy names it (the daemon runs with xheaders).
REMOTE = {"X-Real-Ip": "203.0.113.7"}

Samples = dict[str, list[tuple[dict[str, str], float]]]


def scrape(url: str, headers: dict[str, str] | None = None) -> str:
    response = requests.get(url + "/metrics", headers=headers or {}, timeout=DEADLINE_S)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("text/plain")
    return response.text


def samples(text: str) -> Samples:
    """Sample name (with its _total/_bucket/... suffix) -> [(labels, value)]."""
    found: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return found


def value(found: Samples, name: str, **labels: str) -> float:
    """The sum of *name*'s samples whose labels include *labels*."""
    return sum(
        v for got, v in found.get(name, []) if all(got.get(k) == w for k, w in labels.items())
    )


@dataclass
class Run:
    daemon: DaemonProcess
    job_ids: list[str]
    running_id: str
    text: str


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    base = tmp_path_factory.mktemp("metrics")
    config = {
        "server": {"xheaders": True},
        "metrics": {"token": TOKEN, "store_cache_s": 0},
        "node": {"heartbeat_s": 0.5, "dead_after_s": 5},
    }
    with running_daemon(base / "data", config) as proc:
        yield proc


@pytest.fixture(scope="module")
def run(daemon: DaemonProcess) -> Iterator[Run]:
    """Wooey jobs (one with an input file, one failing), a Galaxy tool run, and a running
    job whose files go through job_files; then one scrape."""
    admin = daemon.client()
    admin.add_script("behave", JOB_SCRIPTS / "behave.py")
    admin.add_script("sleeper", JOB_SCRIPTS / "sleeper.py")
    ok_id = admin.submit("behave", "--infile doc", files={"doc": ("doc.txt", b"one two three")})
    failing_id = admin.submit("behave", "--exit-code 3")
    galaxy = requests.Session()
    galaxy.headers.update({"x-api-key": daemon.admin_key, "Content-Type": "application/json"})
    response = galaxy.post(
        daemon.url + "/api/tools",
        data=json.dumps({"tool_id": "behave", "inputs": {"sleep": "0"}}),
        timeout=DEADLINE_S,
    )
    assert response.status_code == 200, response.text
    galaxy_id = response.json()["jobs"][0]["id"]
    running_id = admin.submit("sleeper", "120")
    details = admin.wait(ok_id)
    assert details["status"] == "completed"
    assert admin.wait(failing_id)["status"] == "FAILURE"
    assert admin.wait(galaxy_id)["status"] == "completed"
    asset = admin.get(details["assets"][0]["url"].removeprefix(daemon.url))
    assert asset.status_code == 200
    # job_files: an upload into the running job's directory and a download back.
    key = daemon.cli("job", "key", running_id).stdout.strip()
    files_url = f"{daemon.url}/api/jobs/{running_id}/files"
    up = requests.post(
        files_url,
        params={"job_key": key, "path": "work/up.txt"},
        files={"file": ("f", b"x" * 5000)},
        timeout=DEADLINE_S,
    )
    assert up.status_code == 200, up.text
    down = requests.get(
        files_url, params={"job_key": key, "path": "work/up.txt"}, timeout=DEADLINE_S
    )
    assert down.status_code == 200 and len(down.content) == 5000
    assert (
        requests.get(daemon.url + "/no/such/path/" + ok_id, timeout=DEADLINE_S).status_code == 404
    )

    def running() -> str | None:
        text = scrape(daemon.url)
        found = samples(text)
        return text if value(found, "jobferry_node_jobs", state="running") >= 1 else None

    text = wait_for("the running job in jobferry_node_jobs", running)
    try:
        yield Run(daemon, [ok_id, failing_id, galaxy_id, running_id], running_id, text)
    finally:
        daemon.cli("job", "cancel", running_id, check=False)


def test_metrics__jobs_of_both_faces_move_counters_gauges_and_histograms(run: Run) -> None:
    found = samples(run.text)
    assert value(found, "jobferry_submissions_total", face="wooey") == 3
    assert value(found, "jobferry_submissions_total", face="galaxy") == 1
    local = {"destination_id": "local", "job_runner_name": "local"}
    assert value(found, "jobferry_job_ends_total", state="ok", reason="success", **local) == 2
    assert value(found, "jobferry_job_ends_total", state="error", reason="exit_code", **local) == 1
    assert value(found, "jobferry_job_queue_wait_seconds_count", destination_id="local") == 4
    assert value(found, "jobferry_job_run_seconds_count", destination_id="local") == 3
    assert value(found, "jobferry_job_run_seconds_sum", destination_id="local") > 0
    for channel, direction, least in (
        ("wooey", "upload", 13),
        ("wooey", "download", 1),
        ("job_files", "upload", 5000),
        ("job_files", "download", 5000),
    ):
        got = value(found, "jobferry_staging_bytes_total", channel=channel, direction=direction)
        assert got >= least, (channel, direction, got)
        assert (
            value(found, "jobferry_staging_seconds_count", channel=channel, direction=direction)
            >= 1
        )
    http = "jobferry_http_request_duration_seconds_count"
    submit = {"route": "/api/scripts/v1/{}/submit", "method": "POST", "status": "2xx"}
    assert value(found, http, **submit) == 3
    assert value(found, http, route="/api/tools", method="POST", status="2xx") == 1
    assert value(found, http, route="(unmatched)", method="GET", status="4xx") >= 1
    assert value(found, "jobferry_node_jobs", state="running", destination_id="local") == 1
    assert value(found, "jobferry_store_jobs", state="running", destination_id="local") == 1
    assert value(found, "jobferry_store_figures_exporter") == 1
    assert value(found, "jobferry_store_nodes", state="up") == 1
    assert value(found, "jobferry_node_cores", kind="total") >= 1
    assert value(found, "jobferry_node_cores", kind="free") < value(
        found, "jobferry_node_cores", kind="total"
    )
    assert value(found, "jobferry_node_memory_bytes", kind="total") > 0
    assert "jobferry_node_gpus" in found and "jobferry_node_drained" in found
    assert 0 <= value(found, "jobferry_node_heartbeat_age_seconds") < DEADLINE_S
    for standard in ("process_cpu_seconds_total", "python_info", "python_gc_collections_total"):
        assert standard in found, standard


def test_metrics__labels_are_bounded_no_job_id_or_raw_path(run: Run) -> None:
    found = samples(run.text)
    label_values = {v for series in found.values() for labels, _ in series for v in labels.values()}
    for job_id in run.job_ids:
        assert not [v for v in label_values if job_id in v], job_id
    assert not [v for v in label_values if "?" in v or "job_key" in v]
    routes = {
        labels["route"] for labels, _ in found["jobferry_http_request_duration_seconds_count"]
    }
    assert routes <= {r for r in routes if r == "(unmatched)" or r.startswith("/")}
    assert all("{}" in r or not re.search(r"[0-9a-f]{16}", r) for r in routes), routes
    assert "/api/jobs/{}/files" in routes


def test_metrics__loopback_open_else_token_or_admin_key(run: Run) -> None:
    daemon = run.daemon
    url = daemon.url + "/metrics"
    assert requests.get(url, timeout=DEADLINE_S).status_code == 200
    assert requests.get(url, headers=REMOTE, timeout=DEADLINE_S).status_code == 403
    wrong = {**REMOTE, "Authorization": "Bearer not-the-token"}
    assert requests.get(url, headers=wrong, timeout=DEADLINE_S).status_code == 403
    assert "jobferry_submissions_total" in scrape(
        daemon.url, {**REMOTE, "Authorization": f"Bearer {TOKEN}"}
    )
    assert scrape(daemon.url, {**REMOTE, "Authorization": f"Bearer {daemon.admin_key}"})
    user_key = daemon.cli("user", "create", "carol").stdout.strip()
    user = {**REMOTE, "Authorization": f"Bearer {user_key}"}
    refused = requests.get(url, headers=user, timeout=DEADLINE_S)
    assert refused.status_code == 403 and refused.json()["message"]


def test_metrics__reaper_round_requeue_and_dead_node_are_counted(run: Run) -> None:
    """A node silent for an hour, with a running job: this node's reaper declares it dead
    and requeues the job; the counters say so."""
    daemon = run.daemon
    old = datetime.now(UTC) - timedelta(hours=1)
    job_id = uuid.uuid4().hex[:16]
    engine = make_engine(daemon.database_url)
    try:
        with engine.begin() as conn:
            admin = conn.execute(select(User.id).where(User.username == "admin")).scalar_one()
            conn.execute(
                insert(Node).values(
                    name="ghost", state="up", incarnation=1, started_at=old, heartbeat_at=old
                )
            )
            conn.execute(
                insert(Job).values(
                    id=job_id,
                    uuid=str(uuid.uuid4()),
                    user_id=admin,
                    name="the ghost's job",
                    argv=[sys.executable, str(JOB_SCRIPTS / "noop.py")],
                    state="running",
                    node="ghost",
                    home_node="ghost",
                    attempt=1,
                    runner="local",
                    destination="local",
                    job_dir=str(daemon.data_dir / "jobs" / job_id[:2] / job_id),
                    created_at=old,
                    updated_at=old,
                )
            )
    finally:
        engine.dispose()

    def requeued() -> Samples | None:
        found = samples(scrape(daemon.url))
        return found if value(found, "jobferry_reaper_jobs_total", action="requeued") else None

    found = wait_for("the reaper's requeue in /metrics", requeued)
    assert value(found, "jobferry_reaper_jobs_total", action="requeued") == 1
    assert value(found, "jobferry_reaper_dead_nodes_total") == 1
    assert value(found, "jobferry_reaper_rounds_total") >= 1
    assert value(found, "jobferry_store_nodes", state="dead") == 1


def test_metrics__unreachable_docker_engine_counts_runner_errors(tmp_path: Path) -> None:
    config = {
        "runners": {"docker": {"enabled": True, "base_url": "unix:///nonexistent/docker.sock"}},
        "destinations": {
            "local": {"runner": "local"},
            "dock": {"runner": "docker", "image": "jobferry-test/busybox:1"},
        },
        "metrics": {"store_cache_s": 0},
    }
    daemon = DaemonProcess(tmp_path / "data", config).start()
    try:
        client = daemon.client()
        client.add_script("behave", JOB_SCRIPTS / "behave.py")
        job_id = client.submit("behave", "", destination="dock")

        def counted() -> Samples | None:
            found = samples(scrape(daemon.url))
            errors = value(
                found, "jobferry_runner_errors_total", job_runner_name="docker", kind="unavailable"
            )
            queued = value(found, "jobferry_store_jobs", state="queued", destination_id="dock")
            return found if errors and queued == 1 else None  # requeued after being counted

        found = wait_for("a runner error and the job queued again in /metrics", counted)
        assert value(found, "jobferry_runner_errors_total", job_runner_name="local") == 0
        # The job goes back and forth: queued while the runner's pause lasts, then
        # claimed for a moment and queued again when the start fails. The CLI cancels
        # only a job that is not running: try until it caught the job queued.
        wait_for(
            "the job cancelled while queued",
            lambda: daemon.cli("job", "cancel", job_id, check=False).returncode == 0,
        )
    finally:
        daemon.stop()


def test_metrics__disabled_has_no_route(tmp_path: Path) -> None:
    daemon = DaemonProcess(tmp_path / "data", {"metrics": {"enabled": False}}).start()
    try:
        client = Client(daemon.url, "")
        response = client.get("/metrics")
        assert response.status_code == 404 and response.json()["error"] == "not_found"
        assert client.get("/healthz").status_code == 200
        spec = client.get("/api/openapi.json").json()
        assert "/metrics" in spec["paths"]  # documented; served when enabled
    finally:
        daemon.stop()


# --- the sample scrape config and dashboard ------------------------------------------------------

#: A metric name in a PromQL expression (functions and keywords are followed by "(" or are
#: in this list; label names are inside braces and removed first).
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset"}


def promql_metrics(expr: str) -> set[str]:
    text = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # range selectors
    text = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", text)  # grouping labels
    text = re.sub(r'"[^"]*"', "", text)
    names = set()
    for match in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*", text):
        word = match.group(0)
        rest = text[match.end() :].lstrip()
        if rest.startswith("(") or word in PROMQL_WORDS:
            continue
        names.add(word)
    return names


def test_metrics__dashboard_and_scrape_config_name_only_exported_metrics(run: Run) -> None:
    exported = set(samples(run.text))
    prometheus = yaml.safe_load((ROOT / "conf/prometheus/prometheus.yml").read_text())
    job = next(j for j in prometheus["scrape_configs"] if j["job_name"] == "jobferry")
    assert job["metrics_path"] == "/metrics"
    assert job["authorization"]["credentials_file"]
    assert len(job["static_configs"][0]["targets"]) >= 2
    dashboard = json.loads((ROOT / "conf/grafana/jobferry.json").read_text())
    panels = [p for p in dashboard["panels"] if p.get("type") != "row"]
    titles = " ".join(p["title"].lower() for p in panels)
    for topic in ("queue", "wait", "run time", "free", "error", "http"):
        assert topic in titles, topic
    expressions = [t["expr"] for p in panels for t in p["targets"]]
    assert expressions and any("histogram_quantile" in e for e in expressions)
    for expr in expressions:
        names = promql_metrics(expr)
        assert names, expr
        assert names <= exported, (expr, names - exported)
