"""Fixtures of the integration tier."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.pg_cluster import PrivateCluster, require_cluster_tools


@pytest.fixture
def cluster() -> Iterator[PrivateCluster]:
    """A PostgreSQL cluster of the test's own (a database "jobferry" in it), which the
    test may stop and start to make an outage; removed afterwards."""
    require_cluster_tools()
    pg = PrivateCluster()
    try:
        pg.start()
        pg.create_database("jobferry")
        yield pg
    finally:
        pg.close()
