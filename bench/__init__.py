"""Benchmarks that measure the served models against same-run references."""
