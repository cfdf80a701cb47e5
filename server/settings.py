"""Server settings: one frozen dataclass, filled by the command line or by code."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from batchwire.telemetry.trace_config import check_trace_settings

#: Triton's --model-control-mode values.
MODEL_CONTROL_MODES = ("none", "poll", "explicit")

#: --audit-queue-full values.
AUDIT_QUEUE_FULL = ("block", "drop")

#: tritonclient sends messages up to 2 GiB; gRPC's own default is 4 MiB.
DEFAULT_MAX_MESSAGE_BYTES = 2**31 - 1


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """How a batchwire server is set up."""

    host: str = "0.0.0.0"
    #: 0 picks a free port (tests); the bound port is reported by the server.
    port: int = 8001
    #: Triton-layout repository; None serves the built-in example models.
    model_repository: Path | None = None
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    #: Pickled nn.Module files run arbitrary code when loaded; refused unless set.
    allow_pickled_models: bool = False
    #: torch intra-op threads per CPU model instance (a model config may set its own);
    #: None: adaptive (see batchwire.batching.placement).
    intra_op_threads: int | None = None
    #: Triton's ``--exit-timeout-secs``: seconds the requests already accepted get to
    #: finish once shutdown refuses new ones; whatever is left then is answered
    #: UNAVAILABLE (see BatchwireServer.stop).
    exit_timeout_secs: float = 30.0
    #: Seconds between the shutdown signal and refusing new requests: health and
    #: readiness report not serving at once, requests are still served meanwhile (so
    #: load balancers stop routing first; Kubernetes' preStop pattern).
    shutdown_delay_secs: float = 0.0
    server_name: str = "batchwire"
    #: Prometheus /metrics port on ``host``; 0 disables the endpoint.
    metrics_port: int = 0
    #: When the metrics port cannot be bound: True stops start-up with a StartupError
    #: (``batchwire serve`` sets it); False logs an error and serves without the endpoint
    #: (for a program embedding the server that would rather keep inference up).
    metrics_required: bool = False
    #: Tracing: a TraceMode value (batchwire.telemetry.trace_config); None follows
    #: OTEL_TRACES_SAMPLER, else DEFAULT_MODE.
    trace_mode: str | None = None
    #: Fraction of requests without a sampled parent traced in "ratio" mode
    #: (None: OTEL_TRACES_SAMPLER_ARG, else DEFAULT_RATIO).
    trace_rate: float | None = None
    #: A TraceExporter value; None follows OTEL_TRACES_EXPORTER, else DEFAULT_EXPORTER.
    trace_exporter: str | None = None
    #: Collector endpoint; None lets the exporter read OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT.
    trace_endpoint: str | None = None

    # -- transport security (Triton's --grpc-use-ssl* options) -----------------------
    #: TLS on the gRPC port; needs ``grpc_server_cert`` and ``grpc_server_key``.
    grpc_use_ssl: bool = False
    #: Mutual TLS: clients must present a certificate signed by ``grpc_root_cert``.
    #: Implies ``grpc_use_ssl``.
    grpc_use_ssl_mutual: bool = False
    #: PEM files; reloaded from disk when they change (new connections see them).
    grpc_server_cert: Path | None = None
    grpc_server_key: Path | None = None
    grpc_root_cert: Path | None = None
    #: Address of the metrics endpoint; None: ``host``.
    metrics_address: str | None = None

    # -- who may do what -------------------------------------------------------------
    #: Triton's ``--grpc-restricted-protocol`` values, ``<groups>:<key>=<value>`` each.
    grpc_restricted_protocol: tuple[str, ...] = ()
    #: Principals, their credentials and scopes (batchwire.server.access); reloaded
    #: when the file changes. None: no caller identity is required.
    auth_config: Path | None = None

    # -- model control (Triton's --model-control-mode) -------------------------------
    #: ``none`` (load everything at start, refuse load/unload), ``explicit`` (load
    #: ``load_models`` at start; load/unload RPCs allowed) or ``poll``.
    model_control_mode: str = "none"
    #: Models loaded at start in explicit mode; ``*`` loads all.
    load_models: tuple[str, ...] = ()
    #: Seconds between repository scans in poll mode.
    repository_poll_secs: float = 15.0

    # -- limits ----------------------------------------------------------------------
    #: Inference requests in flight in the whole server (0: no limit); past it,
    #: RESOURCE_EXHAUSTED.
    max_inflight_requests: int = 0
    #: The same, per client connection (0: no limit).
    max_inflight_requests_per_connection: int = 0
    #: HTTP/2 streams a client connection may hold open at once (0: gRPC's default).
    grpc_max_concurrent_streams: int = 0
    #: ModelStreamInfer streams open at once in the whole server (0: no limit); past
    #: it, a new stream gets RESOURCE_EXHAUSTED.
    max_open_streams: int = 0

    # -- shared memory (Triton's --allow-client-shm) ---------------------------------
    #: Clients may register system shared-memory regions and name them in requests
    #: (Triton's default: off).
    allow_client_shm: bool = False

    # -- response cache (Triton's --cache-config) ------------------------------------
    #: Triton's ``--cache-config`` values, ``<cache name>,<setting>=<value>`` each;
    #: ``("local,size=<bytes>",)`` caches the responses of models whose config enables
    #: ``response_cache`` (batchwire.server.response_cache). Empty: no cache.
    cache_config: tuple[str, ...] = ()

    # -- governance: the audit log and drift statistics (docs/governance.md) ---------
    #: Directory of the audit log: one chained JSON line per inference request
    #: (batchwire.telemetry.audit_log). None: no audit log.
    audit_log: Path | None = None
    #: Audit records carry the tensors' bytes (base64), not only their SHA-256.
    audit_payloads: bool = False
    #: Ed25519 private key (PEM) that signs the log's checkpoints; None: unsigned.
    audit_signing_key: Path | None = None
    #: Records waiting for the writer thread, at most.
    audit_queue_size: int = 10000
    #: What a request does when that queue is full: "block" (waits for room) or "drop"
    #: (its record is dropped and counted).
    audit_queue_full: str = "block"
    #: A log file is closed and a new one begun past this many bytes or seconds.
    audit_rotate_bytes: int = 100 * 2**20
    audit_rotate_secs: float = 86400.0
    #: Days a closed log file is kept (six months by default: the EU AI Act's minimum).
    audit_retention_days: float = 183.0
    #: A signed checkpoint every this many records or seconds, whichever comes first.
    audit_checkpoint_records: int = 1000
    audit_checkpoint_secs: float = 60.0
    #: Count live tensors against the versions' reference profiles (drift statistics).
    drift_statistics: bool = True

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in 0..65535, got {self.port}")
        if self.max_message_bytes < 1024:
            raise ValueError(f"max_message_bytes must be >= 1024, got {self.max_message_bytes}")
        if self.intra_op_threads is not None and self.intra_op_threads < 1:
            raise ValueError(f"intra_op_threads must be >= 1, got {self.intra_op_threads}")
        if not 0 <= self.metrics_port <= 65535:
            raise ValueError(f"metrics_port must be in 0..65535, got {self.metrics_port}")
        check_trace_settings(self.trace_mode, self.trace_rate, self.trace_exporter)
        if self.model_control_mode not in MODEL_CONTROL_MODES:
            raise ValueError(
                f"model_control_mode must be one of {', '.join(MODEL_CONTROL_MODES)}, "
                f"got {self.model_control_mode!r}"
            )
        if self.load_models and self.model_control_mode != "explicit":
            raise ValueError(
                f"load_models needs model_control_mode 'explicit', got {self.model_control_mode!r}"
            )
        for name in ("exit_timeout_secs", "shutdown_delay_secs"):
            seconds = getattr(self, name)
            if not 0 <= seconds < math.inf:  # NaN fails this too
                raise ValueError(f"{name} must be a number of seconds >= 0, got {seconds}")
        if not self.repository_poll_secs > 0:
            raise ValueError(f"repository_poll_secs must be > 0, got {self.repository_poll_secs}")
        for name in (
            "max_inflight_requests",
            "max_inflight_requests_per_connection",
            "grpc_max_concurrent_streams",
            "max_open_streams",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        # Named by their command-line spelling, Triton's, which the operator typed.
        if self.tls:
            using = "--grpc-use-ssl-mutual" if self.grpc_use_ssl_mutual else "--grpc-use-ssl"
            for option, path in (
                ("--grpc-server-cert", self.grpc_server_cert),
                ("--grpc-server-key", self.grpc_server_key),
            ):
                if path is None:
                    raise ValueError(f"{using} needs {option}")
        if self.grpc_use_ssl_mutual and self.grpc_root_cert is None:
            raise ValueError("--grpc-use-ssl-mutual needs --grpc-root-cert")
        if self.audit_queue_full not in AUDIT_QUEUE_FULL:
            raise ValueError(
                f"--audit-queue-full must be one of {', '.join(AUDIT_QUEUE_FULL)}, "
                f"got {self.audit_queue_full!r}"
            )
        for name, low in (
            ("audit_queue_size", 1),
            ("audit_rotate_bytes", 4096),
            ("audit_checkpoint_records", 1),
        ):
            if getattr(self, name) < low:
                flag = "--" + name.replace("_", "-")
                raise ValueError(f"{flag} must be >= {low}, got {getattr(self, name)}")
        for name in ("audit_rotate_secs", "audit_retention_days", "audit_checkpoint_secs"):
            if not 0 < getattr(self, name) < math.inf:
                flag = "--" + name.replace("_", "-")
                raise ValueError(f"{flag} must be a number above 0, got {getattr(self, name)}")
        if self.cache_config:
            from batchwire.server.response_cache import parse_cache_config

            parse_cache_config(self.cache_config)  # CacheConfigError is a ValueError

    @property
    def shutdown_grace(self) -> float:
        """The former name of :attr:`exit_timeout_secs` (read-only)."""
        return self.exit_timeout_secs

    @property
    def tls(self) -> bool:
        """Whether the gRPC port speaks TLS."""
        return self.grpc_use_ssl or self.grpc_use_ssl_mutual
