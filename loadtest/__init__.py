"""Locust load tests with latency targets (service-level objectives).

``batchwire loadtest`` (:mod:`batchwire.loadtest.cli`, :mod:`~batchwire.loadtest.runner`)
runs :mod:`~batchwire.loadtest.locustfile` headless against a local server, checks
the targets of ``slo.toml`` (:mod:`~batchwire.loadtest.slo`) and writes a report
(:mod:`~batchwire.loadtest.report`). :mod:`~batchwire.loadtest.grpc_user` holds the
Locust ``User``; importing it patches gRPC for gevent, so import it only inside
Locust. This package imports nothing on its own.
"""
