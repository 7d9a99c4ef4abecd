"""Galaxy's jobs, configuration, authentication, tools, datasets and users (placeholder)."""

from __future__ import annotations

from typing import Any

from jobferry.api.base import Services


def resource_routes(services: Services) -> list[Any]:
    return []
