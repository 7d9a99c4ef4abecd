"""The Galaxy-compatible face through a real daemon process, split by topic: users, keys,
configuration and routing (test_galaxy_users); tools, jobs and datasets (test_galaxy_jobs)."""
