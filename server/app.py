"""Assemble and run a batchwire server: gRPC, health, reflection, models.

:class:`BatchwireServer` runs on the caller's event loop; :class:`ServerThread`
runs one in a background thread with its own loop (tests, benchmarks, load
tests, and embedding in synchronous programs).
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
import stat
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import torch

from batchwire.core.errors import ModelLoadError
from batchwire.protos import grpc_service_pb2_grpc as pb_grpc
from batchwire.server.access import AccessConfigError, AccessPolicy, parse_restricted_protocol
from batchwire.server.access_grpc import AccessInterceptor
from batchwire.server.audit_stage import transport_refusals
from batchwire.server.dataplane import DataPlane
from batchwire.server.drift_stage import DriftCounts
from batchwire.server.health import HealthReporter
from batchwire.server.model_control import ModelControlMode, RepositoryPoller, startup_models
from batchwire.server.reflection import enable_reflection
from batchwire.server.registry import ModelRegistry
from batchwire.server.repository import ModelRepository
from batchwire.server.response_cache import ResponseCache, parse_cache_config
from batchwire.server.servicer import InferenceServicer
from batchwire.server.settings import ServerSettings
from batchwire.server.shared_memory import SharedMemoryRegions
from batchwire.server.shared_memory_control import SharedMemoryControl
from batchwire.server.stages import STAGES
from batchwire.server.status import DecodeChecked
from batchwire.telemetry import Telemetry, TraceConfig

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter

    from batchwire.server.pipeline import StageFactory
    from batchwire.telemetry.audit_log import AuditLog

log = logging.getLogger(__name__)

#: After the exit timeout: seconds a batch already running on a model instance still
#: gets before its requests are answered UNAVAILABLE (queued ones are failed at once).
STUCK_BATCH_BOUND_S = 1.0
#: The grace ``grpc.aio.Server.stop`` gets once the data plane has drained: time to
#: write the last responses and end the streams. Calls still open after it are cancelled
#: by gRPC, so it comes only after every accepted request has been answered.
TRANSPORT_GRACE_S = 2.0
#: Before the transport stops: calls already sent are refused until none has come for
#: QUIET_S seconds, waiting at most SETTLE_BOUND_S (a client retrying without pause
#: would otherwise hold the shutdown).
QUIET_S = 0.2
SETTLE_BOUND_S = 5.0


class StartupError(Exception):
    """The server cannot start for a reason its operator can fix.

    A port that cannot be listened on, a model repository that is missing, not a
    folder or unreadable. The message is one line naming what and why; ``batchwire
    serve`` prints it without a traceback and exits with status 1. Anything else
    start() raises is a bug and keeps its traceback.
    """


def host_port(host: str, port: int) -> str:
    """``host:port`` as gRPC parses it: an IPv6 literal goes in brackets."""
    if ":" in host and not host.startswith("["):
        return f"[{host}]:{port}"
    return f"{host}:{port}"


def os_reason(exc: OSError) -> str:
    """``address already in use`` from ``[Errno 98] Address already in use``."""
    return exc.strerror.lower() if exc.strerror else str(exc)


def listen_problem(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be listened on, or None when it looks free.

    gRPC reports a failed bind only as "Failed to bind to address" (the cause goes to
    its own log), so the cause is read from probe sockets bound the way gRPC binds:
    SO_REUSEADDR set, so that only a live socket on the port counts as a conflict. Like
    gRPC, a host resolving to several addresses is usable when one of them binds.
    """
    try:
        addresses = socket.getaddrinfo(
            host.strip("[]") or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        return f"unknown host ({os_reason(exc)})"
    problem = None
    for family, kind, proto, _, address in addresses:
        try:
            probe = socket.socket(family, kind, proto)
        except OSError as exc:  # an address family this machine has no stack for
            problem = problem or os_reason(exc)
            continue
        with probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                problem = problem or os_reason(exc)
            else:
                return None
    return problem


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop when installed (15-25% more requests/s measured here), else asyncio's loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class GenericHandlersOnly:
    """Adds generated servicers to a grpc.aio server through generic handlers only.

    Generated ``add_*_to_server`` functions register every method twice: as a generic
    handler and as a *registered method*. grpc.aio's server loop keeps one pending call
    per registered method and runs ``asyncio.wait`` over all of them twice per request;
    with the 27 methods served here that was about a third of the event loop's Python
    time under load. Generic handlers share a single pending call and serve the same
    methods, so the registered ones are skipped.
    """

    def __init__(self, server: grpc.aio.Server) -> None:
        self._server = server

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self._server.add_generic_rpc_handlers(handlers)

    def add_registered_method_handlers(self, service: str, handlers: object) -> None:
        """Skipped on purpose (see the class docstring)."""


class BatchwireServer:
    """One gRPC server serving one model repository."""

    def __init__(
        self,
        settings: ServerSettings,
        *,
        span_exporter: SpanExporter | None = None,
        stages: Sequence[StageFactory] = STAGES,
    ) -> None:
        """``span_exporter`` replaces the one the settings name (tests, embedding);
        ``stages`` orders the inference pipeline (see :mod:`batchwire.server.stages`)."""
        self.settings = settings
        self._span_exporter = span_exporter
        self._stages = tuple(stages)
        self.port: int | None = None
        self.metrics_port: int | None = None
        self.telemetry: Telemetry | None = None
        self.registry: ModelRegistry | None = None
        self._server: grpc.aio.Server | None = None
        self._health: HealthReporter | None = None
        self.dataplane: DataPlane | None = None
        self._examples_dir: Path | None = None
        #: Follows the repository in poll mode (batchwire.server.model_control).
        self._poller: RepositoryPoller | None = None
        self._audit: AuditLog | None = None

    @property
    def address(self) -> str:
        """``host:port`` a local client can dial (loopback when bound to all interfaces)."""
        host = self.settings.host
        if host in ("0.0.0.0", "::", "[::]", ""):
            host = "127.0.0.1"
        return f"{host}:{self.port}"

    def _checked_repository(self) -> Path | None:
        """The repository folder the settings name, once known to be a readable folder.

        None when they name none (the built-in examples are served). Checked before
        anything is bound or loaded, so that a mistyped path is the only thing reported.
        """
        if self.settings.model_repository is None:
            return None
        root = Path(self.settings.model_repository)
        try:
            mode = root.stat().st_mode
        except (FileNotFoundError, NotADirectoryError):
            raise StartupError(f"model repository '{root}' does not exist") from None
        except OSError as exc:
            raise StartupError(f"cannot read model repository '{root}': {os_reason(exc)}") from None
        if stat.S_ISREG(mode):
            raise StartupError(f"model repository '{root}' is a file, not a directory")
        if not stat.S_ISDIR(mode):
            raise StartupError(f"model repository '{root}' is not a directory")
        try:
            with os.scandir(root):
                pass
        except OSError as exc:
            raise StartupError(f"cannot read model repository '{root}': {os_reason(exc)}") from None
        return root

    def _example_repository(self) -> Path:
        """Export the built-in example models into a temporary folder (removed by stop())."""
        from batchwire.examples.export import export_examples

        self._examples_dir = Path(tempfile.mkdtemp(prefix="batchwire-examples-"))
        names = export_examples(self._examples_dir)
        log.info("serving built-in example models %s from %s", ", ".join(names), self._examples_dir)
        return self._examples_dir

    def _access_policy(self) -> AccessPolicy:
        """Restricted groups and the auth config the settings name, once checked."""
        settings = self.settings
        try:
            return AccessPolicy(
                parse_restricted_protocol(settings.grpc_restricted_protocol),
                settings.auth_config,
                mutual_tls=settings.grpc_use_ssl_mutual,
            )
        except AccessConfigError as exc:
            raise StartupError(str(exc)) from None

    def _audit_log(self) -> AuditLog | None:
        """The started audit log the settings ask for (None when none): a key that does not
        load or a directory that cannot be written stops start-up, naming the path."""
        settings = self.settings
        if settings.audit_log is None:
            return None
        from batchwire.telemetry.audit_log import AuditLogError
        from batchwire.telemetry.audit_process import AuditLogProcess
        from batchwire.telemetry.logs import JsonFormatter

        # The writer process logs as this process does.
        level = logging.getLevelName(logging.getLogger("batchwire").getEffectiveLevel())
        json_logs = any(
            isinstance(h.formatter, JsonFormatter) for h in logging.getLogger().handlers
        )
        try:
            log_ = AuditLogProcess(
                settings.audit_log,
                signing_key_path=settings.audit_signing_key,
                log_level=level if level in ("DEBUG", "INFO", "WARNING", "ERROR") else "DEBUG",
                log_format="json" if json_logs else "text",
                payloads=settings.audit_payloads,
                queue_size=settings.audit_queue_size,
                on_full=settings.audit_queue_full,
                rotate_bytes=settings.audit_rotate_bytes,
                rotate_seconds=settings.audit_rotate_secs,
                retention_seconds=settings.audit_retention_days * 86400.0,
                checkpoint_records=settings.audit_checkpoint_records,
                checkpoint_seconds=settings.audit_checkpoint_secs,
            )
            log_.start(asyncio.get_running_loop())
        except AuditLogError as exc:
            raise StartupError(f"--audit-log: {exc}") from None
        self._audit = log_
        return log_

    def _bind(self, server: grpc.aio.Server) -> int:
        """Add the gRPC port to ``server``; returns the bound port (the chosen one for 0)."""
        host, port = self.settings.host, self.settings.port
        address = host_port(host, port)
        # Port 0 always binds; otherwise learn the cause first, which gRPC would not tell.
        problem = listen_problem(host, port) if port else None
        if problem is not None:
            raise StartupError(f"cannot listen on {address}: {problem}")
        try:
            if self.settings.tls:
                from batchwire.server.tls import TlsFileError, server_credentials

                try:
                    credentials = server_credentials(self.settings)
                except TlsFileError as exc:  # changed since start() checked them
                    raise StartupError(str(exc)) from None
                bound: int = server.add_secure_port(address, credentials)  # untyped in grpc
            else:
                bound = server.add_insecure_port(address)
        except RuntimeError as exc:  # grpcio >= 1.50 raises where older ones returned 0
            raise StartupError(
                f"cannot listen on {address}: gRPC could not bind it (its own log says why)"
            ) from exc
        if not bound:
            raise StartupError(f"cannot listen on {address}: gRPC could not bind it")
        return bound

    def _start_metrics(self, telemetry: Telemetry) -> int | None:
        """Start the Prometheus endpoint when the settings ask for one; its port, or None."""
        settings = self.settings
        if not settings.metrics_port:
            return None
        host = settings.metrics_address or settings.host
        try:
            return telemetry.start_metrics(host, settings.metrics_port)
        except OSError as exc:
            address = host_port(host, settings.metrics_port)
            if settings.metrics_required:
                raise StartupError(
                    f"cannot listen on {address} for metrics: {os_reason(exc)}"
                ) from None
            # An embedding program asked for a server that outlives its metrics endpoint.
            log.error("metrics endpoint disabled: cannot bind %s: %s", address, os_reason(exc))
            return None

    async def start(self) -> None:
        """Bind the ports, start answering, then load the models the control mode names.

        ServerLive answers as soon as the port is bound; ServerReady and the
        health service report SERVING once those models are loaded (every model,
        or only ``load_models`` in explicit mode; see
        :mod:`batchwire.server.model_control`), and poll mode then starts following
        the repository. Raises :class:`StartupError`, before anything is loaded, when
        the repository folder or a port cannot be used or a ``load_models`` name is
        not a model folder of the repository; :meth:`stop` releases what was set up.
        """
        settings = self.settings
        # Every check an operator can fail comes before the first log line (telemetry logs
        # its exporter process) or slow step (exporting the examples), so that a failed
        # start says one thing: the TLS files, the repository, the gRPC port, then the
        # metrics port.
        if settings.tls:
            from batchwire.server.tls import TlsFileError, check_tls_files

            try:
                check_tls_files(settings)
            except TlsFileError as exc:
                raise StartupError(str(exc)) from None
        root = self._checked_repository()
        access = self._access_policy()
        audit_log = self._audit_log()
        limit = settings.max_message_bytes
        server = self._server = grpc.aio.server(
            interceptors=[
                AccessInterceptor(
                    access,
                    on_refused=transport_refusals(audit_log) if audit_log is not None else None,
                )
            ]
            if access.enforcing
            else None,
            options=[
                ("grpc.max_send_message_length", limit),
                ("grpc.max_receive_message_length", limit),
                # Fail loudly when the port is taken instead of silently sharing it.
                ("grpc.so_reuseport", 0),
            ]
            # HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS: calls past it wait in the client.
            + (
                [("grpc.max_concurrent_streams", settings.grpc_max_concurrent_streams)]
                if settings.grpc_max_concurrent_streams
                else []
            ),
        )
        self.port = self._bind(server)
        if settings.metrics_port and settings.metrics_required:
            metrics_host = settings.metrics_address or settings.host
            problem = listen_problem(metrics_host, settings.metrics_port)
            if problem is not None:
                address = host_port(metrics_host, settings.metrics_port)
                raise StartupError(f"cannot listen on {address} for metrics: {problem}")
        trace_config = TraceConfig.resolve(
            mode=settings.trace_mode,
            rate=settings.trace_rate,
            exporter=settings.trace_exporter,
            endpoint=settings.trace_endpoint,
            service_name=settings.server_name,
        )
        telemetry = self.telemetry = Telemetry(trace_config, span_exporter=self._span_exporter)
        self.metrics_port = self._start_metrics(telemetry)
        repository = ModelRepository(
            root if root is not None else self._example_repository(),
            allow_pickle=settings.allow_pickled_models,
            intra_op_threads=settings.intra_op_threads,
        )
        mode = ModelControlMode(settings.model_control_mode)
        try:
            startup = startup_models(mode, repository, settings.load_models)
        except ModelLoadError as exc:
            raise StartupError(str(exc)) from None
        self.registry = ModelRegistry(repository, observer_factory=telemetry.observer_factory)
        # Audit records name each version's artifact and config hashes, taken at load.
        self.registry.fingerprints = audit_log is not None
        cache = parse_cache_config(settings.cache_config)  # checked by the settings already
        response_cache = ResponseCache(cache.size) if cache is not None else None
        if response_cache is not None:
            # A model's entries go when it is (re)loaded or unloaded.
            self.registry.add_listener(response_cache.model_changed)
        self.dataplane = DataPlane(
            self.registry,
            telemetry=telemetry,
            server_name=settings.server_name,
            stages=self._stages,
            model_control_mode=mode,
            access=access if access.authenticating else None,
            max_inflight_requests=settings.max_inflight_requests,
            max_inflight_requests_per_connection=settings.max_inflight_requests_per_connection,
            max_open_streams=settings.max_open_streams,
            shared_memory=SharedMemoryControl(
                SharedMemoryRegions() if settings.allow_client_shm else None,
                cuda_available=torch.cuda.is_available(),
            ),
            response_cache=response_cache,
            audit_log=audit_log,
            drift=DriftCounts() if settings.drift_statistics else None,
        )
        telemetry.versions = self.dataplane
        if access.enforcing:
            telemetry.principal_requests = self.dataplane.principal_requests
            telemetry.access_refusals = access.refusals
        self._health = HealthReporter(self.registry)
        services = GenericHandlersOnly(server)
        # DecodeChecked: a request that does not parse is INVALID_ARGUMENT, not UNKNOWN.
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(
            InferenceServicer(self.dataplane), DecodeChecked(services)
        )
        from batchwire.protos import health_pb2_grpc

        health_pb2_grpc.add_HealthServicer_to_server(self._health.servicer, DecodeChecked(services))
        enable_reflection(DecodeChecked(services))
        await server.start()
        await self._health.set_server(False)
        log.info(
            "batchwire listening on %s:%d%s",
            settings.host,
            self.port,
            " (mutual TLS)" if settings.grpc_use_ssl_mutual else " (TLS)" if settings.tls else "",
        )
        if mode is ModelControlMode.POLL:
            self._poller = RepositoryPoller(self.registry, settings.repository_poll_secs)
            await self._poller.snapshot()  # before loading: a change made meanwhile is seen
        await self.registry.load_all(startup)
        await self._health.refresh()
        if self._poller is not None:
            self._poller.start()
        for row in self.registry.index():
            if not row.ready:
                log.warning("model '%s' is %s: %s", row.name, row.state.value, row.reason)

    async def stop(self, grace: float | None = None, delay: float | None = None) -> None:
        """Shut down gracefully: every accepted request answered, once, OK or UNAVAILABLE.

        In order:

        1. Health (server, inference service, every model) turns NOT_SERVING and
           ServerReady/ModelReady false, at once.
        2. ``delay`` seconds (default ``settings.shutdown_delay_secs``) of serving as
           usual, so that load balancers stop routing here first.
        3. The data plane refuses new inference requests and streams with
           UNAVAILABLE; open streams end with UNAVAILABLE once their requests are
           answered.
        4. The requests in flight get ``grace`` seconds (default
           ``settings.exit_timeout_secs``) to finish. Then whatever is left is
           answered UNAVAILABLE: queued requests at once, batches already running
           after :data:`STUCK_BATCH_BOUND_S`.
        5. Only then the gRPC server stops (with :data:`TRANSPORT_GRACE_S` to write
           the last responses: ``grpc.aio.Server.stop`` would cancel whatever is
           still open when its grace ends), the models are unloaded and the
           telemetry exporters flushed.
        """
        grace = self.settings.exit_timeout_secs if grace is None else grace
        delay = self.settings.shutdown_delay_secs if delay is None else delay
        dataplane = self.dataplane
        if dataplane is not None:
            dataplane.accepting = False
        if self._health is not None:
            await self._health.shutdown()
        if self._poller is not None:
            await self._poller.stop()
            self._poller = None
        if dataplane is not None:
            if delay > 0:
                log.info("not ready; still serving for %s s (--shutdown-delay-secs)", delay)
                await asyncio.sleep(delay)
            await self._drain(dataplane, grace)
        if self._server is not None:
            await self._server.stop(TRANSPORT_GRACE_S)
        if self.registry is not None:
            await self.registry.close()
        if dataplane is not None and dataplane.shared_memory.regions is not None:
            dataplane.shared_memory.regions.close()
        if dataplane is not None and dataplane.drift is not None:
            await asyncio.to_thread(dataplane.drift.close)
        if self._audit is not None:
            # After the last answer: every accepted request's record is in the log.
            await asyncio.to_thread(self._audit.close)
            self._audit = None
        if self.telemetry is not None:
            await asyncio.to_thread(self.telemetry.close, min(max(grace, 1.0), 5.0))
        if self._examples_dir is not None:
            shutil.rmtree(self._examples_dir, ignore_errors=True)
            self._examples_dir = None

    async def _drain(self, dataplane: DataPlane, grace: float) -> None:
        """Refuse new requests, wait ``grace`` s for those in flight, then fail the rest."""
        dataplane.refuse_new_requests()
        if dataplane.in_flight:
            log.info(
                "refusing new requests; waiting up to %s s for %d in flight (--exit-timeout-secs)",
                grace,
                dataplane.in_flight,
            )
        if not await dataplane.wait_idle(grace) and self.registry is not None:
            await self._fail_stuck(dataplane, grace)
        await dataplane.wait_quiet(QUIET_S, SETTLE_BOUND_S)

    async def _fail_stuck(self, dataplane: DataPlane, grace: float) -> None:
        """Answer what is still in flight after the exit timeout with UNAVAILABLE."""
        assert self.registry is not None
        log.warning(
            "%d request(s) still in flight after the exit timeout (%s s); answering them "
            "UNAVAILABLE",
            dataplane.in_flight,
            grace,
        )
        # Stopping a batcher without draining fails its queue at once and gives running
        # batches the bound; registry.close() later waits for these same stops.
        batchers = [served.batcher for served in self.registry.index() if served.batcher]
        await asyncio.gather(
            *(b.stop(drain=False, timeout=STUCK_BATCH_BOUND_S) for b in batchers),
            return_exceptions=True,
        )
        # The failed requests leave infer() within a loop iteration or two.
        if not await dataplane.wait_idle(STUCK_BATCH_BOUND_S):
            log.error(
                "%d request(s) still in flight outside any model queue; stopping anyway",
                dataplane.in_flight,
            )

    async def wait(self) -> None:
        """Block until the gRPC server terminates."""
        if self._server is not None:
            await self._server.wait_for_termination()


class ServerThread:
    """A :class:`BatchwireServer` running on its own event loop in a daemon thread."""

    def __init__(
        self,
        settings: ServerSettings,
        *,
        span_exporter: SpanExporter | None = None,
        stages: Sequence[StageFactory] = STAGES,
    ) -> None:
        self.server = BatchwireServer(settings, span_exporter=span_exporter, stages=stages)
        self._loop = new_event_loop()
        self._thread = threading.Thread(target=self._run, name="batchwire-server", daemon=True)
        self._started = threading.Event()
        self._error: BaseException | None = None

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self.server.start())
        except BaseException as exc:
            self._error = exc
            self._started.set()
            return
        self._started.set()
        self._loop.run_forever()

    def start(self, timeout: float = 120.0) -> ServerThread:
        """Start the server and wait until its models are loaded."""
        self._thread.start()
        if not self._started.wait(timeout):
            raise TimeoutError(f"batchwire server did not start within {timeout} s")
        if self._error is not None:
            raise RuntimeError(f"batchwire server failed to start: {self._error}") from self._error
        return self

    @property
    def address(self) -> str:
        return self.server.address

    @property
    def metrics_url(self) -> str | None:
        """``http://host:port/metrics`` when the metrics endpoint is on."""
        port = self.server.metrics_port
        return (
            None
            if port is None
            else f"http://{self.server.address.rsplit(':', 1)[0]}:{port}/metrics"
        )

    def stop(self, grace: float = 2.0) -> None:
        """Stop the server and its thread (idempotent)."""
        if not self._thread.is_alive():
            return
        future = asyncio.run_coroutine_threadsafe(self.server.stop(grace), self._loop)
        try:
            future.result(timeout=grace + 30)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=30)

    def __enter__(self) -> ServerThread:
        return self.start() if not self._thread.is_alive() else self

    def __exit__(self, *exc: object) -> None:
        self.stop()
