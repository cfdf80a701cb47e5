"""Observability: OpenTelemetry tracing, Prometheus metrics, Triton statistics, structured logs."""
