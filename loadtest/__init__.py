"""Locust load tests with latency targets (service-level objectives)."""
