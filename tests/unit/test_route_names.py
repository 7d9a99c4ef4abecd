"""Route templates name the route a request matched, never its raw path."""

from __future__ import annotations

import pytest

from jobferry.api.route_names import template_of

pytestmark = pytest.mark.engine_independent


@pytest.mark.parametrize(
    ("pattern", "template"),
    [
        (r"/api/jobs/v1/([^/]+)/status/?", "/api/jobs/v1/{}/status"),
        (r"/api/jobs/([^/]+)/files/?", "/api/jobs/{}/files"),
        (r"/api/openapi\.json", "/api/openapi.json"),
        (r"/api/users(/deleted)?/([^/]+)/?$", "/api/users{}/{}"),
        (r"/api/jobs/([^/]+)/(?:resume|error)/?", "/api/jobs/{}/{}"),
        (r"/healthz", "/healthz"),
    ],
)
def test_template_of__groups_become_placeholders(pattern: str, template: str) -> None:
    assert template_of(pattern) == template
