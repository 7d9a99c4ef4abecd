"""Benchmarks of the jobferry daemon (run as scripts; see bench/README.md)."""
