"""Sends serialized OTLP ``ExportTraceServiceRequest`` bytes over gRPC or HTTP.

OTLP/gRPC calls ``opentelemetry.proto.collector.trace.v1.TraceService/Export`` through
a grpc channel's public ``unary_unary``, with the bytes as they are (no second
serialization); OTLP/HTTP POSTs them (``application/x-protobuf``) to the endpoint's
``/v1/traces``. Nothing of the OpenTelemetry SDK is used.

Settings (:meth:`OtlpSettings.resolve`), each from the first that is set: the
``--trace-endpoint`` flag (endpoint only), ``OTEL_EXPORTER_OTLP_TRACES_<NAME>``,
``OTEL_EXPORTER_OTLP_<NAME>``, the default:

- ``ENDPOINT``: gRPC ``http://localhost:4317``, HTTP ``http://localhost:4318``. For
  gRPC the scheme decides plaintext (``http``) or TLS (``https``); without a scheme,
  ``INSECURE=true`` means plaintext, else TLS, except for the flag, where a bare
  ``host:port`` means plaintext. For HTTP, ``/v1/traces`` is appended to the generic
  variable and to a flag without a path; the ``TRACES_`` variable is used as it is.
- ``HEADERS``: ``key=value,key2=value2``, percent-decoded (keys lower-cased: gRPC
  metadata keys must be).
- ``TIMEOUT``: seconds per export, retries included (as the Python SDK reads it;
  the OTLP spec says milliseconds), default 10.
- ``COMPRESSION``: ``gzip`` (both), ``deflate`` (HTTP), ``none``.
- ``CERTIFICATE``, ``CLIENT_KEY``, ``CLIENT_CERTIFICATE``: PEM files for TLS and mTLS.

Retries follow the OTLP spec: gRPC codes CANCELLED, DEADLINE_EXCEEDED,
RESOURCE_EXHAUSTED, ABORTED, OUT_OF_RANGE, UNAVAILABLE and DATA_LOSS, HTTP 429, 502,
503, 504 and failed connections are retried with exponential backoff (1 s, 2 s, 4 s...
with +-20% jitter, or the server's ``Retry-After``), at most ``MAX_ATTEMPTS`` tries
and never past the export's timeout; :meth:`OtlpTransport.shutdown` ends a wait at
once. Failures are logged (with the gRPC code or HTTP status), never raised.
Concurrency: one thread calls :meth:`~OtlpTransport.export` at a time; ``shutdown``
may come from any thread.
"""

from __future__ import annotations

import gzip
import logging
import os
import random
import ssl
import threading
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple
from urllib.parse import unquote, urlsplit

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from batchwire.telemetry.trace_config import TraceExporter, env_value

__all__ = ["MAX_ATTEMPTS", "OtlpSettings", "OtlpTransport", "otlp_transport"]

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 6
#: The first retry's wait; each next one doubles.
BACKOFF_S = 1.0
DEFAULT_TIMEOUT_S = 10.0
RETRYABLE_GRPC = frozenset(
    {
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)
RETRYABLE_HTTP = frozenset({429, 502, 503, 504})
#: ``/package.Service/Method`` of TraceService.Export, from the proto's own descriptor.
_EXPORT = trace_service_pb2.DESCRIPTOR.services_by_name["TraceService"].methods_by_name["Export"]
EXPORT_METHOD = f"/{_EXPORT.containing_service.full_name}/{_EXPORT.name}"


@dataclass(frozen=True, slots=True)
class OtlpSettings:
    """Where and how OTLP export requests go (see the module docstring)."""

    #: ``host:port`` for gRPC, the full URL for HTTP.
    endpoint: str
    http: bool = False
    #: gRPC only: plaintext rather than TLS.
    insecure: bool = True
    headers: tuple[tuple[str, str], ...] = ()
    timeout_s: float = DEFAULT_TIMEOUT_S
    #: None, "gzip" or (HTTP) "deflate".
    compression: str | None = None
    certificate: str | None = None
    client_key: str | None = None
    client_certificate: str | None = None

    @classmethod
    def resolve(
        cls, exporter: str, endpoint: str | None, environ: Mapping[str, str] | None = None
    ) -> OtlpSettings:
        """The settings of ``exporter`` (otlp-grpc, otlp-http) for the ``--trace-endpoint``
        ``endpoint`` (None: not given) and the OTEL_EXPORTER_OTLP_* variables."""
        env = os.environ if environ is None else environ

        def variable(name: str) -> str | None:
            return env_value(env, f"OTEL_EXPORTER_OTLP_TRACES_{name}", f"OTEL_EXPORTER_OTLP_{name}")

        http = exporter == TraceExporter.otlp_http
        if http:
            url = _http_url(endpoint, env)
            insecure = urlsplit(url).scheme != "https"
        else:
            url, insecure = _grpc_target(endpoint, env, variable("INSECURE"))
        compression = (variable("COMPRESSION") or "none").lower()
        if compression not in ("none", "gzip", "deflate") or (
            compression == "deflate" and not http
        ):
            log.warning(
                "tracing: OTLP compression %r is not supported; sending uncompressed", compression
            )
            compression = "none"
        return cls(
            endpoint=url,
            http=http,
            insecure=insecure,
            headers=_headers(variable("HEADERS") or ""),
            timeout_s=_timeout(variable("TIMEOUT")),
            compression=None if compression == "none" else compression,
            certificate=variable("CERTIFICATE"),
            client_key=variable("CLIENT_KEY"),
            client_certificate=variable("CLIENT_CERTIFICATE"),
        )


def _grpc_target(
    endpoint: str | None, env: Mapping[str, str], insecure_variable: str | None
) -> tuple[str, bool]:
    """(host:port, plaintext?) of the gRPC collector."""
    if endpoint is not None and "://" not in endpoint:
        return endpoint, True  # a bare --trace-endpoint host:port: plaintext, as collectors listen
    url = (
        endpoint
        or env_value(env, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
        or "http://localhost:4317"
    )
    if "://" not in url:
        return url, (insecure_variable or "").lower() == "true"
    parts = urlsplit(url)
    return parts.netloc, parts.scheme != "https"


def _http_url(endpoint: str | None, env: Mapping[str, str]) -> str:
    """The full URL export requests are POSTed to."""
    if endpoint is not None:
        url = endpoint if "://" in endpoint else f"http://{endpoint}"
        return url if urlsplit(url).path not in ("", "/") else url.rstrip("/") + "/v1/traces"
    signal = env_value(env, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    if signal is not None:
        return signal
    base = env_value(env, "OTEL_EXPORTER_OTLP_ENDPOINT") or "http://localhost:4318"
    return base.rstrip("/") + "/v1/traces"


def _headers(text: str) -> tuple[tuple[str, str], ...]:
    headers = []
    for item in text.split(","):
        key, equals, value = item.partition("=")
        key, value = unquote(key).strip().lower(), unquote(value).strip()
        if not equals or not key:
            if item.strip():
                log.warning("tracing: OTLP header %r is not key=value; ignored", item.strip())
            continue
        headers.append((key, value))
    return tuple(headers)


def _timeout(text: str | None) -> float:
    if text is None:
        return DEFAULT_TIMEOUT_S
    try:
        seconds = float(text)
    except ValueError:
        seconds = 0.0
    if seconds <= 0:
        log.warning("tracing: OTLP timeout %r is not a positive number of seconds; using 10", text)
        return DEFAULT_TIMEOUT_S
    return seconds


def _read(path: str | None) -> bytes | None:
    return None if path is None else Path(path).read_bytes()


class _Failure(NamedTuple):
    """Why one attempt failed, and whether another may succeed."""

    reason: str
    retryable: bool
    #: The server's Retry-After, in seconds (None: back off exponentially).
    retry_after: float | None = None


class OtlpTransport:
    """Sends export requests, retrying as OTLP says (see the module docstring)."""

    def __init__(self, settings: OtlpSettings) -> None:
        self.settings = settings
        self._closed = threading.Event()

    def export(self, body: bytes, spans: int) -> bool:
        """Send one serialized ExportTraceServiceRequest of ``spans`` spans; True once
        the collector took it, False when it gave up (logged)."""
        settings = self.settings
        deadline = time.monotonic() + settings.timeout_s
        attempt = 0
        while True:
            failure = self._send(body, max(deadline - time.monotonic(), 0.001))
            if failure is None:
                return True
            attempt += 1
            delay = failure.retry_after
            if delay is None:
                delay = BACKOFF_S * 2 ** (attempt - 1) * random.uniform(0.8, 1.2)
            if (
                failure.retryable
                and attempt < MAX_ATTEMPTS
                and time.monotonic() + delay <= deadline
                and not self._closed.is_set()
            ):
                log.warning(
                    "tracing: exporting %d span(s) to %s failed (%s); retrying in %.1f s",
                    spans,
                    settings.endpoint,
                    failure.reason,
                    delay,
                )
                if not self._closed.wait(delay):
                    continue
            log.error(
                "tracing: %d span(s) not exported to %s: %s",
                spans,
                settings.endpoint,
                failure.reason,
            )
            return False

    def _send(self, body: bytes, timeout_s: float) -> _Failure | None:
        raise NotImplementedError

    def shutdown(self) -> None:
        """Abort a retry in progress; later exports give up after their first try."""
        self._closed.set()


def _log_partial_success(response: ExportTraceServiceResponse, endpoint: str) -> None:
    rejected = response.partial_success.rejected_spans
    if rejected:
        log.warning(
            "tracing: %s rejected %d span(s): %s",
            endpoint,
            rejected,
            response.partial_success.error_message,
        )


class GrpcTransport(OtlpTransport):
    """OTLP/gRPC: TraceService/Export on one channel (grpc reconnects it as needed)."""

    def __init__(self, settings: OtlpSettings) -> None:
        super().__init__(settings)
        compression = grpc.Compression.Gzip if settings.compression == "gzip" else None
        if settings.insecure:
            self._channel = grpc.insecure_channel(settings.endpoint, compression=compression)
        else:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=_read(settings.certificate),
                private_key=_read(settings.client_key),
                certificate_chain=_read(settings.client_certificate),
            )
            self._channel = grpc.secure_channel(
                settings.endpoint, credentials, compression=compression
            )
        # No request serializer: the request is already bytes.
        self._call = self._channel.unary_unary(
            EXPORT_METHOD,
            request_serializer=None,
            response_deserializer=ExportTraceServiceResponse.FromString,
        )

    def _send(self, body: bytes, timeout_s: float) -> _Failure | None:
        try:
            response = self._call(body, timeout=timeout_s, metadata=self.settings.headers or None)
        except grpc.RpcError as error:  # also a grpc.Call: code() and details()
            code = error.code()
            return _Failure(f"{code.name}: {error.details()}", code in RETRYABLE_GRPC)
        _log_partial_success(response, self.settings.endpoint)
        return None

    def shutdown(self) -> None:
        super().shutdown()
        self._channel.close()


class HttpTransport(OtlpTransport):
    """OTLP/HTTP: a POST of the protobuf bytes per export."""

    def __init__(self, settings: OtlpSettings) -> None:
        super().__init__(settings)
        self._context = None
        if urlsplit(settings.endpoint).scheme == "https":
            self._context = ssl.create_default_context(cafile=settings.certificate)
            if settings.client_certificate:
                self._context.load_cert_chain(settings.client_certificate, settings.client_key)
        self._headers = {"Content-Type": "application/x-protobuf", **dict(settings.headers)}
        if settings.compression is not None:
            self._headers["Content-Encoding"] = settings.compression

    def _send(self, body: bytes, timeout_s: float) -> _Failure | None:
        if self.settings.compression == "gzip":
            body = gzip.compress(body)
        elif self.settings.compression == "deflate":
            body = zlib.compress(body)
        request = urllib.request.Request(
            self.settings.endpoint, data=body, headers=self._headers, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout_s, context=self._context) as reply:
                answer = reply.read()
        except urllib.error.HTTPError as error:
            return _Failure(
                f"HTTP {error.code} {error.reason}",
                error.code in RETRYABLE_HTTP,
                _seconds(error.headers.get("Retry-After")),
            )
        except OSError as error:  # refused, reset, timed out (URLError is an OSError)
            return _Failure(str(getattr(error, "reason", error)), True)
        if answer:
            _log_partial_success(
                ExportTraceServiceResponse.FromString(answer), self.settings.endpoint
            )
        return None


def _seconds(retry_after: str | None) -> float | None:
    """Retry-After in seconds (its HTTP-date form is not read: back off instead)."""
    try:
        return max(float(retry_after), 0.0) if retry_after else None
    except ValueError:
        return None


def otlp_transport(settings: OtlpSettings) -> OtlpTransport:
    """The transport for ``settings``."""
    return HttpTransport(settings) if settings.http else GrpcTransport(settings)
