"""The OTLP transport: settings from flags and OTEL_EXPORTER_OTLP_*, and what reaches a
real collector over gRPC and HTTP, retries on the codes OTLP calls retryable included."""

from __future__ import annotations

import logging
import threading

import grpc
import pytest
from testsupport import request_span_record

from batchwire.telemetry import otlp_transport
from batchwire.telemetry.otlp_encoding import OtlpEncoder
from batchwire.telemetry.otlp_transport import OtlpSettings
from batchwire.telemetry.otlp_transport import otlp_transport as make_transport

BODY = OtlpEncoder({"service.name": "transport-test"}, "batchwire", "0", 0).encode(
    [request_span_record(span_id=i) for i in (1, 2, 3)]
)


@pytest.fixture(autouse=True)
def quick_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Retries after 10 ms rather than a second (the rules stay the same)."""
    monkeypatch.setattr(otlp_transport, "BACKOFF_S", 0.01)


# -- settings ------------------------------------------------------------------------------


def test_grpc_settings_from_the_flag_and_the_environment() -> None:
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "https://collector:4317",
        "OTEL_EXPORTER_OTLP_TRACES_HEADERS": "Api-Key=s%3Dcret, tenant = a b ",
        "OTEL_EXPORTER_OTLP_HEADERS": "ignored=1",
        "OTEL_EXPORTER_OTLP_TIMEOUT": "2.5",
        "OTEL_EXPORTER_OTLP_COMPRESSION": "gzip",
        "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE": "/etc/ca.pem",
    }
    settings = OtlpSettings.resolve("otlp-grpc", None, env)
    assert (settings.endpoint, settings.insecure, settings.http) == ("collector:4317", False, False)
    assert settings.headers == (("api-key", "s=cret"), ("tenant", "a b"))
    assert (settings.timeout_s, settings.compression) == (2.5, "gzip")
    assert settings.certificate == "/etc/ca.pem"
    # A bare host:port flag means plaintext; a URL's scheme decides.
    assert OtlpSettings.resolve("otlp-grpc", "127.0.0.1:4317", env).insecure
    flag = OtlpSettings.resolve("otlp-grpc", "https://traces.example:443", env)
    assert (flag.endpoint, flag.insecure) == ("traces.example:443", False)
    # Without a scheme, OTEL_EXPORTER_OTLP_INSECURE decides (TLS unless "true").
    bare = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "collector:4317"}
    assert not OtlpSettings.resolve("otlp-grpc", None, bare).insecure
    insecure = {**bare, "OTEL_EXPORTER_OTLP_INSECURE": "true"}
    assert OtlpSettings.resolve("otlp-grpc", None, insecure).insecure
    default = OtlpSettings.resolve("otlp-grpc", None, {})
    assert (default.endpoint, default.insecure, default.timeout_s) == ("localhost:4317", True, 10.0)
    assert default.headers == () and default.compression is None


def test_http_settings_append_the_signal_path_where_otlp_says() -> None:
    def url(endpoint: str | None, env: dict[str, str]) -> str:
        return OtlpSettings.resolve("otlp-http", endpoint, env).endpoint

    assert url(None, {}) == "http://localhost:4318/v1/traces"
    assert (
        url(None, {"OTEL_EXPORTER_OTLP_ENDPOINT": "https://c:4318/"}) == "https://c:4318/v1/traces"
    )
    # The signal's own variable is the full URL, as it is.
    signal = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "https://c/custom"}
    assert url(None, signal) == "https://c/custom"
    assert url("c:4318", signal) == "http://c:4318/v1/traces"
    assert url("https://c:4318/own/path", {}) == "https://c:4318/own/path"


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "soon", "is not a positive number of seconds"),
        ("OTEL_EXPORTER_OTLP_COMPRESSION", "brotli", "is not supported"),
        ("OTEL_EXPORTER_OTLP_HEADERS", "novalue", "is not key=value"),
    ],
)
def test_bad_settings_are_logged_and_left_at_their_defaults(
    caplog: pytest.LogCaptureFixture, variable: str, value: str, message: str
) -> None:
    with caplog.at_level(logging.WARNING):
        settings = OtlpSettings.resolve("otlp-grpc", None, {variable: value})
    assert message in caplog.text
    assert (settings.timeout_s, settings.compression, settings.headers) == (10.0, None, ())


# -- gRPC ----------------------------------------------------------------------------------


def _grpc(collector, **env: str) -> otlp_transport.OtlpTransport:
    return make_transport(OtlpSettings.resolve("otlp-grpc", collector.url, env))


def test_grpc_export_sends_the_bytes_with_headers_and_compression(
    grpc_collector,
) -> None:
    transport = _grpc(
        grpc_collector,
        OTEL_EXPORTER_OTLP_HEADERS="x-tenant=blue",
        OTEL_EXPORTER_OTLP_COMPRESSION="gzip",
    )
    try:
        assert transport.export(BODY, 3)
    finally:
        transport.shutdown()
    (received,) = grpc_collector.received
    assert received.request.SerializeToString() == BODY
    assert received.span_count == 3 and received.headers["x-tenant"] == "blue"


def test_grpc_retries_retryable_codes_then_succeeds(
    grpc_collector, caplog: pytest.LogCaptureFixture
) -> None:
    grpc_collector.failures += [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED]
    transport = _grpc(grpc_collector)
    with caplog.at_level(logging.WARNING):
        assert transport.export(BODY, 3)
    transport.shutdown()
    assert grpc_collector.attempts == 3 and len(grpc_collector.received) == 1
    assert caplog.text.count("retrying in") == 2 and "UNAVAILABLE" in caplog.text


def test_grpc_gives_up_at_once_on_a_code_that_is_not_retryable(
    grpc_collector, caplog: pytest.LogCaptureFixture
) -> None:
    grpc_collector.failures.append(grpc.StatusCode.INVALID_ARGUMENT)
    transport = _grpc(grpc_collector)
    with caplog.at_level(logging.ERROR):
        assert not transport.export(BODY, 3)
    transport.shutdown()
    assert grpc_collector.attempts == 1 and not grpc_collector.received
    assert "3 span(s) not exported" in caplog.text and "INVALID_ARGUMENT" in caplog.text


def test_grpc_retries_are_bounded(grpc_collector) -> None:
    grpc_collector.failures += [grpc.StatusCode.UNAVAILABLE] * 20
    transport = _grpc(grpc_collector)
    assert not transport.export(BODY, 3)
    transport.shutdown()
    assert grpc_collector.attempts == otlp_transport.MAX_ATTEMPTS


def test_shutdown_ends_a_retry_wait(grpc_collector, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stop must not wait out the backoff (here about a minute) of a failing export."""
    monkeypatch.setattr(otlp_transport, "BACKOFF_S", 60.0)
    grpc_collector.failures += [grpc.StatusCode.UNAVAILABLE] * 5
    transport = _grpc(grpc_collector, OTEL_EXPORTER_OTLP_TIMEOUT="600")
    results: list[bool] = []
    exporting = threading.Thread(target=lambda: results.append(transport.export(BODY, 3)))
    exporting.start()
    while grpc_collector.attempts == 0:  # the first try has failed: it waits to retry
        exporting.join(0.01)
    transport.shutdown()
    exporting.join(30)
    assert not exporting.is_alive() and results == [False]
    assert grpc_collector.attempts == 1


# -- HTTP ----------------------------------------------------------------------------------


def _http(collector, **env: str) -> otlp_transport.OtlpTransport:
    return make_transport(OtlpSettings.resolve("otlp-http", collector.url, env))


@pytest.mark.parametrize("compression", ["none", "gzip", "deflate"])
def test_http_export_posts_protobuf_to_v1_traces(http_collector, compression: str) -> None:
    transport = _http(
        http_collector,
        OTEL_EXPORTER_OTLP_TRACES_HEADERS="Authorization=Bearer%20t0ken",
        OTEL_EXPORTER_OTLP_COMPRESSION=compression,
    )
    assert transport.export(BODY, 3)
    (received,) = http_collector.received
    assert received.path == "/v1/traces"
    assert received.headers["content-type"] == "application/x-protobuf"
    assert received.headers["authorization"] == "Bearer t0ken"
    assert received.headers.get("content-encoding") == (
        None if compression == "none" else compression
    )
    assert received.request.SerializeToString() == BODY


def test_http_retries_429_and_503_honouring_retry_after(http_collector) -> None:
    http_collector.failures += [(429, {"Retry-After": "0"}), (503, {})]
    assert _http(http_collector).export(BODY, 3)
    assert http_collector.attempts == 3 and len(http_collector.received) == 1


def test_http_gives_up_at_once_on_a_client_error(
    http_collector, caplog: pytest.LogCaptureFixture
) -> None:
    http_collector.failures.append((400, {}))
    with caplog.at_level(logging.ERROR):
        assert not _http(http_collector).export(BODY, 3)
    assert http_collector.attempts == 1
    assert "HTTP 400" in caplog.text


def test_http_retries_a_refused_connection_within_bounds(caplog: pytest.LogCaptureFixture) -> None:
    from testsupport import free_port

    settings = OtlpSettings.resolve("otlp-http", f"127.0.0.1:{free_port()}", {})
    with caplog.at_level(logging.WARNING):
        assert not make_transport(settings).export(BODY, 3)
    assert caplog.text.count("retrying in") == otlp_transport.MAX_ATTEMPTS - 1
    assert "refused" in caplog.text.lower()
