"""The telemetry registry: bounded label values, and no cost or series when disabled."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from jobferry.config.operations import MetricsConfig
from jobferry.services.telemetry import REASON_CLASSES, Telemetry, reason_class

pytestmark = pytest.mark.engine_independent


def series(telemetry: Telemetry, name: str) -> list[dict[str, str]]:
    text = telemetry.exposition().decode()
    return [
        dict(sample.labels)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    ]


@pytest.mark.parametrize(
    ("state", "reason", "expected"),
    [
        ("ok", None, "success"),
        ("deleted", "cancelled (node n1 died)", "cancelled"),
        ("error", "exit code 3", "exit_code"),
        ("error", "exit code 0; the job's disk was full", "disk_full"),
        ("error", "walltime exceeded (60 s)", "walltime"),
        ("error", "out of memory (OOM killer)", "memory"),
        ("error", "the job was lost", "lost"),
        ("error", "requeued: never started", "start_failed"),
        ("error", "job 0123456789abcdef: something odd at /srv/data", "other"),
    ],
)
def test_reason_class__maps_free_text_to_a_bounded_class(
    state: str, reason: str | None, expected: str
) -> None:
    assert reason_class(state, reason) == expected
    assert expected in REASON_CLASSES


def test_telemetry__labels_never_carry_free_text_methods_or_statuses() -> None:
    telemetry = Telemetry(MetricsConfig(), "node-a", "1.0")
    telemetry.http_request("/api/jobs/{}/files", "FOO", 503, 0.01)
    telemetry.job_ended("local", "local", "error", "job 0123456789abcdef failed oddly", 2.0)
    http = series(telemetry, "jobferry_http_request_duration_seconds_count")
    assert http == [{"route": "/api/jobs/{}/files", "method": "other", "status": "5xx"}]
    ends = series(telemetry, "jobferry_job_ends_total")
    assert ends == [
        {"destination_id": "local", "job_runner_name": "local", "state": "error", "reason": "other"}
    ]
    assert {"face": "wooey"} in series(telemetry, "jobferry_submissions_total")
    assert series(telemetry, "process_cpu_seconds_total") and series(telemetry, "python_info")


def test_telemetry__disabled_registers_nothing_and_records_nothing() -> None:
    telemetry = Telemetry(MetricsConfig(enabled=False), "node-a")
    telemetry.submitted("wooey")
    telemetry.http_request("/healthz", "GET", 200, 0.001)
    telemetry.job_started("local", None)
    telemetry.job_ended("local", "local", "ok", None, 1.0)
    telemetry.staged("wooey", "upload", 10, 0.1)
    telemetry.runner_error("docker", "unavailable")
    telemetry.store_error("http")
    telemetry.reaper_round(dead=1, actions={"requeued": 1})
    assert list(telemetry.registry.collect()) == []
    assert telemetry.exposition() == b""
