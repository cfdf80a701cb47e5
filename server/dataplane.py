"""The data plane: everything a server does for its callers, whatever their protocol.

:class:`DataPlane` is the one object a front end talks to. The gRPC servicer
(:mod:`batchwire.server.servicer`) is such a front end; a second one, a KServe v2
REST endpoint for instance, would reuse all of this the same way and add only its
wire format:

1. Take the server's :class:`DataPlane` (``BatchwireServer`` builds one and hands it
   to every front end it starts; they share models, statistics and settings).
2. For each inference request, build an
   :class:`~batchwire.server.inference_call.InferenceCall` from the wire message with
   the front end's :class:`~batchwire.server.inference_call.Codec` (decode to an
   :class:`~batchwire.core.types.InferenceRequest`, encode an
   :class:`~batchwire.core.types.InferenceResult`), a
   :class:`~batchwire.server.inference_call.Caller` that reads the protocol's
   headers (``traceparent`` for tracing, credentials for a future authorization
   stage), the model name and version from the message or the URL, and the
   caller's deadline; then await :meth:`DataPlane.infer`, which returns the encoded
   response. Streaming is a front end calling :meth:`infer` once per message.
3. For every other operation call the matching method (readiness, metadata,
   repository control, statistics, trace and log settings). They take and return
   plain Python and :mod:`batchwire.core.metadata` types, never protocol messages.
4. Report an :class:`~batchwire.core.errors.InferenceError` from any of them with
   the front end's status for its ``code`` (one to one, see
   :class:`~batchwire.core.errors.StatusCode`) and its ``message`` verbatim; any
   other exception is a bug, reported as INTERNAL.

Inference runs the pipeline (:mod:`batchwire.server.pipeline`): the stages of
:data:`batchwire.server.stages.STAGES` in order, inside an envelope that starts and
finishes the request's trace span and encodes the response. Every front end's
requests pass the same stages, so authorization, routing, caching and auditing
added there hold for all of them.

Shutdown (driven by ``BatchwireServer.stop``; every front end sees the same):

- :attr:`DataPlane.accepting` False: readiness (server and models) reports false,
  requests are still served (the shutdown delay).
- :meth:`DataPlane.refuse_new_requests`: from then on :meth:`DataPlane.infer` and
  :meth:`DataPlane.open_stream` raise ServerShuttingDownError (UNAVAILABLE) at once,
  and every open stream is told (the ``on_shutdown`` it registered), so that it can
  end once its own requests are answered. Requests already inside :meth:`infer` are
  not touched: they finish, or the batcher fails them when the server gives up.
- :attr:`DataPlane.in_flight` counts the calls inside :meth:`infer`, always (limits
  or not): one integer added to and taken from per request, so that
  :meth:`wait_idle` knows when every accepted request has been answered.

Concurrency: loop thread only (the server's event loop), like the registry.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from batchwire import __version__
from batchwire.core.errors import (
    InferenceError,
    ModelLoadError,
    ModelNotFoundError,
    ModelNotReadyError,
    ServerShuttingDownError,
    StatusCode,
    UnsupportedError,
)
from batchwire.core.metadata import ModelMetadata, RepositoryEntry, ServerMetadata, TensorMetadata
from batchwire.core.validation import expected_shape
from batchwire.server.inference_call import UNREAD, InferenceCall
from batchwire.server.limits import InFlight, OpenStreams
from batchwire.server.model_control import ModelControlMode, check_control_allowed
from batchwire.server.pipeline import Pipeline, StageFactory
from batchwire.server.registry import ModelRegistry, ModelState, ServedModel
from batchwire.server.repository.overrides import OverrideError, parse_load_parameters
from batchwire.server.rollback import RollbackGate
from batchwire.server.shadow import ShadowCounts
from batchwire.server.shared_memory_control import SharedMemoryControl
from batchwire.server.stages import STAGES
from batchwire.telemetry.logs import LogSettingError
from batchwire.telemetry.tracing import ACTIVE_REQUEST, TraceSettingError

if TYPE_CHECKING:
    from batchwire.protos.model_config_pb2 import ModelConfig
    from batchwire.server.access import AccessPolicy
    from batchwire.server.drift_stage import DriftCounts
    from batchwire.server.response_cache import ResponseCache
    from batchwire.telemetry import Telemetry
    from batchwire.telemetry.audit_log import AuditLog
    from batchwire.telemetry.tracing import RequestSpan, Tracing

__all__ = [
    "BASE_EXTENSIONS",
    "TELEMETRY_EXTENSIONS",
    "DataPlane",
    "InvalidSettingError",
    "ModelLoadFailedError",
]

log = logging.getLogger(__name__)

#: Triton protocol extensions every batchwire server implements (ServerMetadata).
BASE_EXTENSIONS = ("model_configuration", "model_repository", "schedule_policy", "parameters")
#: Extensions added when the server has a Telemetry (statistics, trace and log settings).
TELEMETRY_EXTENSIONS = ("statistics", "trace", "logging")

_perf_ns = time.perf_counter_ns

#: What a request refused during shutdown is told (with status UNAVAILABLE).
SHUTTING_DOWN_MESSAGE = (
    "server is shutting down and accepts no new inference requests; retry on another replica"
)


class InvalidSettingError(InferenceError):
    """A settings update (trace, log, model load parameters) names a bad key or value."""

    code = StatusCode.INVALID_ARGUMENT
    reason = "invalid_argument"


class ModelLoadFailedError(InferenceError):
    """A model named in a load request could not be loaded; the message says why."""

    code = StatusCode.INVALID_ARGUMENT
    reason = "load_failed"


class _NoTracing:
    """Stands in for Tracing when the data plane has no telemetry."""

    armed = False


class DataPlane:
    """Serves one model registry to any number of front ends (see the module docstring).

    ``stages`` orders the inference pipeline (default :data:`STAGES`). With a
    ``telemetry``, statistics, trace and log settings are served and requests are
    traced and counted; without one those operations raise UnsupportedError.
    """

    def __init__(
        self,
        registry: ModelRegistry,
        *,
        telemetry: Telemetry | None = None,
        server_name: str = "batchwire",
        extensions: Iterable[str] = BASE_EXTENSIONS,
        stages: Sequence[StageFactory] = STAGES,
        model_control_mode: ModelControlMode | str = ModelControlMode.NONE,
        access: AccessPolicy | None = None,
        max_inflight_requests: int = 0,
        max_inflight_requests_per_connection: int = 0,
        max_open_streams: int = 0,
        shared_memory: SharedMemoryControl | None = None,
        response_cache: ResponseCache | None = None,
        audit_log: AuditLog | None = None,
        drift: DriftCounts | None = None,
    ) -> None:
        self.registry = registry
        #: The audit log (--audit-log) the audit stage (batchwire.server.audit_stage)
        #: writes to; None: requests are not audited.
        self.audit_log = audit_log
        #: Drift windows of the versions with a reference profile, filled by the drift
        #: stage (batchwire.server.drift_stage); None: no drift statistics.
        self.drift = drift
        #: Triton's response cache (--cache-config), used by the ResponseCaching stage
        #: (batchwire.server.response_cache_stage); None: no response is cached.
        self.response_cache = response_cache
        #: Triton's model control mode: whether load/unload requests are allowed.
        self.model_control_mode = ModelControlMode(model_control_mode)
        #: Caps on inference requests in flight, in the server and per connection
        #: (0: none), and their counts; enforced by the admit stage (batchwire.server.limits).
        self.request_caps = InFlight(max_inflight_requests, max_inflight_requests_per_connection)
        #: Streams open at once in the whole server (0: no cap); see open_stream().
        self.streams = OpenStreams(max_open_streams)
        #: Who may call what (batchwire.server.access); None: everyone may do anything.
        self.access = access
        #: Triton's shared-memory operations and the registered regions
        #: (batchwire.server.shared_memory_control); default: client shared memory off.
        self.shared_memory = shared_memory or SharedMemoryControl(None)
        #: model -> {version: weight} of the traffic split in force (batchwire.server.
        #: traffic_split; set when a model's chain is built), and (model, version,
        #: route) -> requests the split stage routed; both read by the metrics.
        self.traffic_weights: dict[str, dict[str, int]] = {}
        self.routed_requests: dict[tuple[str, str, str], int] = {}
        #: Shadow copies and their comparisons (batchwire.server.shadow), for the metrics.
        self.shadow_counts = ShadowCounts()
        #: model -> its rollback gate (batchwire.server.rollback; replaced at each load),
        #: and (model, rule) -> rollbacks that rule fired, for the metrics.
        self.rollback_gates: dict[str, RollbackGate] = {}
        self.rollbacks: dict[tuple[str, str], int] = {}
        #: (model, principal) -> inference requests that principal sent to that model
        #: (counted by the Authorize stage; read by the metrics at scrape time).
        self.principal_requests: dict[tuple[str, str], int] = {}
        self.telemetry = telemetry
        self.server_name = server_name
        names = list(extensions)
        if telemetry is not None:
            names += [e for e in TELEMETRY_EXTENSIONS if e not in names]
        self.extensions = tuple(names)
        #: False once the server is stopping: it reports itself and its models not ready.
        self.accepting = True
        #: True once shutdown refuses new inference requests (refuse_new_requests()).
        self.refusing = False
        #: Calls inside infer() now: accepted and not yet answered.
        self.in_flight = 0
        #: Requests and streams refused because the server is shutting down.
        self.refused = 0
        #: What each open stream asked to be told when shutdown starts refusing.
        self._on_shutdown: set[Callable[[], None]] = set()
        #: Per request, inference tests ``armed`` and nothing else when it is False.
        self._tracing: Tracing | _NoTracing = (
            telemetry.tracing if telemetry is not None else _NoTracing()
        )
        self.pipeline = Pipeline(self, stages)
        self._chains = self.pipeline.chains
        # A (re)loaded or unloaded model may have a new configuration: rebuild its chain.
        registry.add_listener(self._model_changed)

    def _model_changed(self, name: str, ready: bool) -> None:
        self.pipeline.forget(name)
        # A load ends a rollback (batchwire.server.rollback) at once, not at the next request.
        gate = self.rollback_gates.get(name)
        if gate is not None:
            try:
                current: object = self.registry.find(name)
            except InferenceError:
                current = None
            if gate.built_for is not current:
                del self.rollback_gates[name]

    # Inference -------------------------------------------------------------

    async def infer(self, call: InferenceCall) -> Any:
        """Run ``call`` through the pipeline; returns the codec's encoded response.

        Raises InferenceError (with the status to report) when a stage refuses or
        fails the request. When the request is traced its span covers every stage and
        the encoding, and its ids are the active request for log records meanwhile.
        Raises ServerShuttingDownError once shutdown refuses new requests.
        """
        if self.refusing:
            self.refused += 1
            raise ServerShuttingDownError(SHUTTING_DOWN_MESSAGE)
        self.in_flight += 1
        try:
            tracing = self._tracing
            if tracing.armed:
                return await self._infer_traced(call, tracing)  # type: ignore[arg-type]
            chain = self._chains.get(call.model) or self.pipeline.chain(call.model)
            result = await chain(call)
            return call.codec.encode(call.message, call.served.spec, result)  # type: ignore[union-attr,arg-type]
        finally:
            self.in_flight -= 1

    async def _infer_traced(self, call: InferenceCall, tracing: Tracing) -> Any:
        caller = call.caller
        parent = caller.trace_parent
        if parent is UNREAD:
            parent = caller.trace_parent = tracing.extract(caller.metadata())
        span = tracing.start(call.model, parent, caller.method)
        chain = self._chains.get(call.model) or self.pipeline.chain(call.model)
        if span is None:
            result = await chain(call)
            return call.codec.encode(call.message, call.served.spec, result)  # type: ignore[union-attr,arg-type]
        call.span = span
        token = ACTIVE_REQUEST.set(span.ids)
        try:
            result = await chain(call)
            span.send_ns = _perf_ns()
            response = call.codec.encode(call.message, call.served.spec, result)  # type: ignore[union-attr,arg-type]
        except BaseException as exc:
            _describe(span, call)
            tracing.finish(span, exc)
            raise
        finally:
            ACTIVE_REQUEST.reset(token)
        _describe(span, call)
        tracing.finish(span)
        return response

    def open_stream(self, on_shutdown: Callable[[], None] | None = None) -> Callable[[], None]:
        """Count a stream (a front end's ``ModelStreamInfer``) as open; returns its release.

        Raises ServerShuttingDownError (UNAVAILABLE) once shutdown refuses new requests,
        TooManyRequestsError (RESOURCE_EXHAUSTED) when ``max_open_streams`` streams are
        open already. ``on_shutdown`` is called once, on the loop, if shutdown starts
        refusing while the stream is open. The front end calls the release once, when
        the stream ends however it ends.
        """
        if self.refusing:
            self.refused += 1
            raise ServerShuttingDownError(SHUTTING_DOWN_MESSAGE)
        release = self.streams.open()
        if on_shutdown is None:
            return release
        listeners = self._on_shutdown
        listeners.add(on_shutdown)

        def release_stream() -> None:
            listeners.discard(on_shutdown)
            release()

        return release_stream

    def shutting_down_error(self) -> ServerShuttingDownError:
        """The error a request or stream refused during shutdown ends with."""
        return ServerShuttingDownError(SHUTTING_DOWN_MESSAGE)

    # Shutdown --------------------------------------------------------------

    def refuse_new_requests(self) -> None:
        """Refuse every inference request and stream from now on; tell open streams.

        Also ends readiness (``accepting``). Requests already inside :meth:`infer`
        carry on. Idempotent.
        """
        self.accepting = False
        if self.refusing:
            return
        self.refusing = True
        for notify in list(self._on_shutdown):
            try:
                notify()
            except Exception:  # one broken stream must not keep the others open
                log.exception("telling an open stream about the shutdown failed")
        self._on_shutdown.clear()

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no request is in flight, at most ``timeout`` seconds; True if none is.

        Polls every few milliseconds rather than having every request check for a
        waiter on its way out: this runs once, at shutdown.
        """
        deadline = time.monotonic() + timeout
        while self.in_flight:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            await asyncio.sleep(min(0.005, left))
        return True

    async def wait_quiet(self, quiet: float, timeout: float) -> None:
        """Wait until no request has been refused for ``quiet`` s (at most ``timeout`` s).

        Calls a client sent before it learnt of the shutdown may still wait inside
        the transport; refusing them (UNAVAILABLE) before the transport stops keeps
        them from being cancelled there.
        """
        deadline = time.monotonic() + timeout
        seen = -1
        while self.refused != seen or self.in_flight:
            seen = self.refused
            left = deadline - time.monotonic()
            if left <= 0:
                return
            await asyncio.sleep(min(quiet, left))

    # Readiness and metadata ------------------------------------------------

    def server_live(self) -> bool:
        """True while the server answers at all."""
        return True

    def server_ready(self) -> bool:
        """Accepting requests, and every model of the repository has a ready version."""
        return self.accepting and self.registry.all_ready

    def model_ready(self, name: str, version: str = "") -> bool:
        """Whether ``name`` (version ``version``, latest when empty) serves requests now."""
        try:
            served = self.registry.find(name, version)
        except InferenceError:
            return False
        return self.accepting and served.ready

    def server_metadata(self) -> ServerMetadata:
        return ServerMetadata(self.server_name, __version__, self.extensions)

    def model_metadata(self, name: str, version: str = "") -> ModelMetadata:
        """Inputs and outputs of a model version in any state (raises NOT_FOUND / UNAVAILABLE)."""
        served = self._configured(name, version)
        spec = served.spec
        assert spec is not None
        return ModelMetadata(
            served.name,
            tuple(self.registry.versions(served.name)),
            spec.platform,
            tuple(
                TensorMetadata(t.name, t.datatype, tuple(expected_shape(spec, t)))
                for t in spec.inputs
            ),
            tuple(
                TensorMetadata(t.name, t.datatype, tuple(expected_shape(spec, t)))
                for t in spec.outputs
            ),
        )

    def model_config(self, name: str, version: str = "") -> ModelConfig:
        """The version's configuration as the repository read it (Triton's ModelConfig).

        The repository's own representation (config.pbtxt parsed into Triton's
        schema), which a front end returns as is: as a protobuf message over gRPC,
        through ``google.protobuf.json_format`` over REST.
        """
        config = self._configured(name, version).config
        assert config is not None
        return config

    def _configured(self, name: str, version: str) -> ServedModel:
        served = self.registry.find(name, version)
        if served.spec is None or served.config is None:
            raise ModelNotReadyError(f"model '{name}' has no readable configuration")
        return served

    # Repository ------------------------------------------------------------

    def repository_index(self, ready_only: bool = False) -> list[RepositoryEntry]:
        """Every model version the repository holds (only the ready ones with ``ready_only``).

        As Triton's index, in any model control mode: a model folder that was never
        loaded (explicit mode, or found by poll mode's next scan) is listed by name
        alone, with an empty version and state. Ready means what ModelReady says: a
        hung version (every instance stuck in a batch) is left out with ``ready_only``
        and listed UNAVAILABLE, its reason naming the hang, without it. A version that
        keeps serving after a failed reload is READY with the failure as its reason.
        """
        rows = [
            RepositoryEntry(served.name, served.version, *served.status())
            for served in self.registry.index()
            if served.ready or not ready_only
        ]
        if ready_only:
            return rows
        known = set(self.registry.names())
        try:
            # One listing of the root, on the loop: cheap next to a model load.
            folders = self.registry.repository.model_names()
        except (OSError, ModelLoadError) as exc:
            log.warning("RepositoryIndex cannot list the model repository: %s", exc)
            folders = []
        rows.extend(RepositoryEntry(name, "", "", "") for name in folders if name not in known)
        rows.sort(key=lambda row: row.name)  # stable: a model's versions keep their order
        return rows

    async def load_model(self, name: str, parameters: Mapping[str, object] | None = None) -> None:
        """(Re)load ``name``; raises an InferenceError saying why not.

        ``parameters`` are Triton's load parameters (key -> bool, int, str, bytes or
        None): ``config``, a JSON ModelConfig used instead of the config.pbtxt, and
        ``file:<version>/<path>`` files making up a private model folder used instead of
        the repository's (:mod:`batchwire.server.repository.overrides`). The new versions
        load next to the serving ones and replace them once up (see the registry).

        In order: ModelControlDisabledError (UNAVAILABLE) unless the model control mode
        is explicit; InvalidSettingError (INVALID_ARGUMENT) for a parameter that cannot
        be used: an unknown key, a value of the wrong type, a file path that is not
        ``<version>/<path>`` inside the model folder, files without ``config``;
        ModelNameError (INVALID_ARGUMENT) for a name that is not a folder name (without
        file overrides: not a folder inside the repository), before anything is loaded;
        InvalidSettingError ``Invalid config override: ...`` for a config that is not
        JSON, not a ModelConfig or not a valid config for its model files; nothing is
        loaded or changed then. ModelLoadFailedError when there is no such folder or
        the model fails to load (a model that was serving keeps serving its loaded
        versions then, and the index gives them the failure as reason).
        """
        check_control_allowed(self.model_control_mode)
        try:
            overrides = parse_load_parameters(parameters)
        except OverrideError as exc:
            raise InvalidSettingError(str(exc)) from None
        repository = self.registry.repository
        try:
            if overrides:
                entry = await asyncio.to_thread(repository.discover_override, name, overrides)
            else:
                # Checked apart from loading so that a missing folder is refused without
                # adding an unavailable entry to the index (Triton lists only known models).
                await asyncio.to_thread(repository.model_folder, name)
                entry = None
            await self.registry.load(name, entry)
        except OverrideError as exc:
            raise InvalidSettingError(str(exc)) from None
        except InferenceError:
            raise
        except Exception as exc:
            raise ModelLoadFailedError(f"failed to load '{name}': {exc}") from exc

    async def unload_model(self, name: str) -> None:
        """Stop serving ``name`` (drains its queues).

        Raises ModelControlDisabledError (UNAVAILABLE) unless the model control mode
        is explicit, ModelNotFoundError for a model the server does not know.
        """
        check_control_allowed(self.model_control_mode)
        await self.registry.unload(name)

    # Observability ---------------------------------------------------------

    def _telemetry(self, what: str, hint: str) -> Telemetry:
        if self.telemetry is None:
            raise UnsupportedError(f"batchwire does not implement {what}; {hint}")
        return self.telemetry

    def _check_model(self, name: str, version: str = "") -> None:
        """Raise ModelNotFoundError for a model (or version) the repository does not hold.

        A known one that cannot be served passes: it keeps its statistics and settings.
        """
        try:
            self.registry.find(name, version)
        except ModelNotFoundError:
            raise
        except InferenceError:
            pass

    def statistics(self, name: str = "", version: str = "") -> list[dict]:
        """Triton's ModelStatistics (JSON shape), one dict per version that ever loaded.

        ``name`` empty: every loaded version, hung ones included (what an operator
        needs most then is their statistics); ``version`` empty: every version of
        ``name``.
        """
        telemetry = self._telemetry("ModelStatistics", "statistics are not collected")
        registry = self.registry
        if name:
            self._check_model(name, version)
            versions = [version] if version else registry.versions(name)
            keys = [(name, v) for v in versions]
        else:
            keys = [
                (m.name, m.version)
                for m in registry.index()
                if m.version and m.state is ModelState.READY  # loaded; hung or not
            ]
        rows = []
        for model, model_version in keys:
            stats = telemetry.statistics(model, model_version)
            if stats is not None:
                rows.append(stats)
        return rows

    def trace_settings(
        self, model: str = "", changes: Mapping[str, Sequence[str]] | None = None
    ) -> dict[str, list[str]]:
        """The effective trace settings of ``model`` (global when empty), after ``changes``.

        ``changes`` maps Triton's trace setting keys to their new values (an empty list
        clears a key); None or empty only reads. Raises InvalidSettingError.
        """
        telemetry = self._telemetry("TraceSetting", "tracing is not available")
        if model:
            self._check_model(model)
        tracing = telemetry.tracing
        try:
            if changes:
                settings = tracing.update_settings(model, changes)
                log.info("trace settings%s updated: %s", f" of '{model}'" if model else "", changes)
            else:
                settings = tracing.get_settings(model)
        except TraceSettingError as exc:
            raise InvalidSettingError(str(exc)) from exc
        return settings

    def log_settings(self, changes: Mapping[str, object] | None = None) -> dict[str, object]:
        """Triton's log settings after ``changes`` (None or empty only reads).

        Values are bool, int or str as the setting takes; None leaves one as it is. Raises
        InvalidSettingError.
        """
        telemetry = self._telemetry("LogSettings", "set the level with --log-level")
        try:
            return telemetry.logs.update(changes) if changes else telemetry.logs.get()
        except LogSettingError as exc:
            raise InvalidSettingError(str(exc)) from exc


def _describe(span: RequestSpan, call: InferenceCall) -> None:
    """What the span reports of a request: who sent it, what it held, which version served it."""
    span.principal = call.caller.principal
    request = call.request
    if request is not None:
        span.request = request
        span.version = call.served.version  # type: ignore[union-attr]
