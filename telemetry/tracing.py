"""OpenTelemetry tracing of inference requests and batches.

What is traced
--------------
- One SERVER span per inference request (``ModelInfer``, and each request of a
  ``ModelStreamInfer`` stream), child of the caller's W3C ``traceparent``
  (gRPC invocation metadata, TraceContext propagator) when there is one.
- The request's phases as events on that span, built after the fact from the
  batcher's :class:`~batchwire.core.types.RequestTimings` (perf_counter_ns,
  converted to epoch ns with an offset captured at start): ``queue_start``
  (entered the model's queue), ``compute_start`` (its batch started; the queue
  wait ends), ``compute_input_end`` (batch assembled), ``compute_output_start``
  (model done), ``compute_end`` (outputs split), ``response_send``; a request
  that failed before its batch ran has ``queue_end`` instead of the compute
  events. Events, not child spans: exporting a span costs several times as much
  as an event (SDK OTLP encoding, measured: ~23 us per bare span plus ~4 us per
  attribute, ~3 us per event), and the batch span below carries the batch's
  own timing once for all its requests.
- One ``batch`` span per executed batch holding traced requests, with a link to
  every traced request span in it and the batch's model, version, size, padded
  size, device, instance and request count; ERROR status when the batch failed.

Cost
----
With tracing off (the default) the servicer tests one boolean per request
(:attr:`Tracing.armed`) and nothing else happens: no metadata is read, no span
or context object is created. When tracing is on, every span is known only once
it is over, so the loop records each as a compact tuple
(:mod:`batchwire.telemetry.span_records`) and a sink
(:mod:`batchwire.telemetry.span_export`) turns the tuples into exported spans,
normally in a separate exporter process: no span object is built on the loop,
and no export thread competes with it for the GIL. Sampling is decided here
(parent-based, then trace-id ratio, the SDK's algorithm) before anything is
allocated.

Configuration
-------------
:class:`TraceConfig` merges flags and the standard ``OTEL_*`` environment
variables (flags win). :class:`TraceSettings` holds Triton's trace settings
(``trace_level``, ``trace_rate``, ``trace_count``, ``log_frequency``,
``trace_file``), global and per model, as the TraceSetting RPC reads and
updates them.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from contextvars import ContextVar
from typing import TYPE_CHECKING

from opentelemetry.sdk.trace.sampling import TraceIdRatioBased
from opentelemetry.trace import SpanContext, TraceFlags, get_current_span
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from batchwire.telemetry.span_export import LocalSink, NullSink, ProcessSink, SpanSink
from batchwire.telemetry.span_records import BatchSpanRecord, RequestSpanRecord
from batchwire.telemetry.trace_config import TraceConfig, TraceExporter, TraceMode

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter

    from batchwire.core.observer import BatchRecord
    from batchwire.core.types import InferenceRequest

__all__ = [
    "ACTIVE_REQUEST",
    "RequestSpan",
    "TraceConfig",
    "TraceSettingError",
    "TraceSettings",
    "Tracing",
]

log = logging.getLogger(__name__)

_perf_ns = time.perf_counter_ns
_getrandbits = random.getrandbits
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_MASK64 = (1 << 64) - 1


# -- Triton trace settings -------------------------------------------------------------

TRACE_LEVELS = ("OFF", "TIMESTAMPS", "TENSORS")
#: Every key the TraceSetting RPC accepts, in the order responses list them.
TRACE_SETTING_KEYS = (
    "trace_level",
    "trace_rate",
    "trace_count",
    "log_frequency",
    "trace_file",
    "trace_mode",
)


class TraceSettingError(ValueError):
    """A TraceSetting update names an unknown key or an invalid value."""


def _rate_string(ratio: float) -> str:
    """Triton's trace_rate ("trace 1 in N") closest to ``ratio``; "0" for never."""
    return "0" if ratio <= 0.0 else str(max(1, round(1.0 / ratio)))


class _Counter:
    """trace_count: traces still to take (-1: unlimited). Only touched on the loop thread."""

    __slots__ = ("left",)

    def __init__(self, left: int) -> None:
        self.left = left

    def take(self) -> bool:
        left = self.left
        if left < 0:
            return True
        if left == 0:
            return False
        self.left = left - 1
        return True


class _Scope:
    """The compiled sampling decision of one model (or of the global settings)."""

    __slots__ = ("always", "bound", "counter", "off", "tensors")

    def __init__(self, level: Sequence[str], ratio: float, counter: _Counter) -> None:
        self.off = "OFF" in level or not level
        self.tensors = "TENSORS" in level
        self.always = ratio >= 1.0
        self.bound = TraceIdRatioBased.get_bound_for_rate(ratio)
        self.counter = counter


class TraceSettings:
    """Triton's trace settings, global and per model; compiled into sampling scopes.

    Values are lists of strings, as in the TraceSetting RPC. A model inherits
    every key it does not set; an update with an empty value list clears the
    key (a model then follows the global value again; a global key goes back to
    its startup value).
    """

    def __init__(self, config: TraceConfig) -> None:
        level = ["OFF"] if config.mode == TraceMode.off else ["TIMESTAMPS"]
        ratio = 1.0 if config.mode == TraceMode.always else config.rate
        self._default_ratio = ratio
        self._defaults: dict[str, list[str]] = {
            "trace_level": level,
            "trace_rate": [_rate_string(ratio)],
            "trace_count": ["-1"],
            "log_frequency": ["0"],
            "trace_file": [""],
            "trace_mode": ["opentelemetry"],
        }
        self._global: dict[str, list[str]] = {k: list(v) for k, v in self._defaults.items()}
        self._models: dict[str, dict[str, list[str]]] = {}
        self._global_counter = _Counter(-1)
        self._model_counters: dict[str, _Counter] = {}
        self.global_scope = self._compile(self._global, self._global_counter)
        self.model_scopes: dict[str, _Scope] = {}

    def get(self, model: str = "") -> dict[str, list[str]]:
        """The effective settings of ``model`` (the global ones when empty)."""
        effective = {k: list(v) for k, v in self._global.items()}
        counter = self._global_counter
        if model:
            effective.update((k, list(v)) for k, v in self._models.get(model, {}).items())
            counter = self._model_counters.get(model, counter)
        effective["trace_count"] = [str(counter.left)]
        return effective

    def update(self, model: str, changes: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
        """Apply ``changes`` (key -> values; empty values clear) and return the effective settings."""
        checked: dict[str, list[str] | None] = {}
        for key, values in changes.items():
            if key not in TRACE_SETTING_KEYS:
                raise TraceSettingError(
                    f"unknown trace setting '{key}'; expected one of {', '.join(TRACE_SETTING_KEYS)}"
                )
            given = [str(v) for v in values]
            checked[key] = _validate(key, given) if given else None
        target = self._models.setdefault(model, {}) if model else self._global
        for key, value in checked.items():
            if value is None:
                if model:
                    target.pop(key, None)
                else:
                    target[key] = list(self._defaults[key])
            else:
                target[key] = value
            if key == "trace_count":
                self._reset_counter(model, value)
        if model and not target:
            self._models.pop(model, None)
        self._recompile()
        return self.get(model)

    def _reset_counter(self, model: str, values: list[str] | None) -> None:
        if model:
            if values is None:
                self._model_counters.pop(model, None)
            else:
                self._model_counters[model] = _Counter(int(values[0]))
        else:
            self._global_counter.left = int((values or ["-1"])[0])

    def _ratio(self, rate: list[str]) -> float:
        if rate == self._defaults["trace_rate"]:
            return self._default_ratio  # keep an exact --trace-rate (0.3 is not 1 in N)
        n = int(rate[0])
        return 0.0 if n == 0 else 1.0 / n

    def _compile(self, settings: Mapping[str, list[str]], counter: _Counter) -> _Scope:
        return _Scope(settings["trace_level"], self._ratio(settings["trace_rate"]), counter)

    def _recompile(self) -> None:
        self.global_scope = self._compile(self._global, self._global_counter)
        scopes = {}
        for model, own in self._models.items():
            merged = {**self._global, **own}
            counter = self._model_counters.get(model, self._global_counter)
            scopes[model] = self._compile(merged, counter)
        self.model_scopes = scopes

    @property
    def armed(self) -> bool:
        """True when some model may be traced."""
        return not self.global_scope.off or any(not s.off for s in self.model_scopes.values())


def _validate(key: str, values: list[str]) -> list[str]:
    def integer(minimum: int) -> list[str]:
        if len(values) != 1:
            raise TraceSettingError(f"trace setting '{key}' takes one value, got {values}")
        try:
            number = int(values[0])
        except ValueError:
            raise TraceSettingError(
                f"trace setting '{key}' must be an integer, got '{values[0]}'"
            ) from None
        if number < minimum:
            raise TraceSettingError(f"trace setting '{key}' must be >= {minimum}, got {number}")
        return [str(number)]

    if key == "trace_level":
        levels = [v.upper() for v in values]
        bad = [v for v in levels if v not in TRACE_LEVELS]
        if bad:
            raise TraceSettingError(
                f"unknown trace_level {bad}; expected some of {', '.join(TRACE_LEVELS)}"
            )
        if "OFF" in levels and len(levels) > 1:
            raise TraceSettingError(f"trace_level OFF cannot be combined with others: {levels}")
        return levels
    if key == "trace_rate":
        return integer(0)
    if key == "trace_count":
        return integer(-1)
    if key == "log_frequency":
        return integer(0)
    if key == "trace_mode":
        if values != ["opentelemetry"]:
            raise TraceSettingError(
                f"trace_mode '{values[0]}' is not supported; batchwire traces with opentelemetry"
            )
        return values
    if len(values) != 1:  # trace_file
        raise TraceSettingError(f"trace setting '{key}' takes one value, got {values}")
    return values


# -- spans -----------------------------------------------------------------------------


class RequestSpan:
    """A sampled request: its ids now, its span record once it is answered."""

    __slots__ = (
        "ids",
        "method",
        "model",
        "parent",
        "principal",
        "request",
        "send_ns",
        "span_id",
        "start_ns",
        "tensors",
        "trace_id",
        "version",
    )

    def __init__(
        self,
        trace_id: int,
        span_id: int,
        parent: SpanContext | None,
        method: str,
        model: str,
        tensors: bool,
    ) -> None:
        self.trace_id = trace_id
        self.span_id = span_id
        #: (trace_id, span_id): what the batcher carries to link batch spans.
        self.ids = (trace_id, span_id)
        self.parent = parent
        self.method = method
        self.model = model
        self.tensors = tensors
        self.start_ns = _perf_ns()
        #: The model version that served it (set by the front end once resolved).
        self.version = ""
        #: The authenticated principal that sent it ("" when none).
        self.principal = ""
        #: The decoded request (set by the front end once decoded).
        self.request: InferenceRequest | None = None
        #: perf_counter_ns when encoding the response started (0: never).
        self.send_ns = 0

    @property
    def context(self) -> SpanContext:
        """The span's OpenTelemetry context (built on demand; the request path uses ids)."""
        return SpanContext(self.trace_id, self.span_id, False, _SAMPLED)


#: (trace_id, span_id) of the request span the running task serves, for log records.
#: A ContextVar of our own: setting it costs a fraction of attaching an OTel context.
ACTIVE_REQUEST: ContextVar[tuple[int, int] | None] = ContextVar(
    "batchwire_active_request", default=None
)


class Tracing:
    """Samples requests, builds their spans and the batch spans, exports them."""

    def __init__(
        self,
        config: TraceConfig,
        *,
        exporter: SpanExporter | None = None,
    ) -> None:
        self.config = config
        self.settings = TraceSettings(config)
        #: Tested by the front end before anything else: False means "trace nothing".
        self.armed = False
        self._given_exporter = exporter
        self._sink: SpanSink | None = None
        self._lock = threading.Lock()
        self._propagator = TraceContextTextMapPropagator()
        #: perf_counter_ns + offset = Unix epoch ns.
        self.epoch_offset_ns = time.time_ns() - _perf_ns()
        self._closed = False
        if self.settings.armed:
            self._ensure_sink()
        self.armed = self.settings.armed and self._sink is not None

    # -- settings (loop thread) ----------------------------------------------------------

    def get_settings(self, model: str = "") -> dict[str, list[str]]:
        return self.settings.get(model)

    def update_settings(
        self, model: str, changes: Mapping[str, Sequence[str]]
    ) -> dict[str, list[str]]:
        """Apply a TraceSetting update (raises TraceSettingError); returns the effective settings."""
        result = self.settings.update(model, changes)
        if self.settings.armed:
            self._ensure_sink()
        self.armed = self.settings.armed and self._sink is not None
        return result

    def _ensure_sink(self) -> None:
        with self._lock:
            if self._sink is not None or self._closed:
                return
            exporter = self._given_exporter
            if exporter is not None:
                self._sink = LocalSink(exporter, self.config.service_name, self.epoch_offset_ns)
                where = f"with {type(exporter).__name__} in-process"
            elif self.config.exporter == TraceExporter.none:
                self._sink = NullSink()
                where = "nowhere (exporter none)"
            else:
                self._sink = ProcessSink(self.config, self.epoch_offset_ns)
                endpoint = f" to {self.config.endpoint}" if self.config.endpoint else ""
                where = f"{self.config.exporter}{endpoint} from an exporter process"
            log.info("tracing: exporting spans %s", where)

    # -- per request (loop thread) -------------------------------------------------------

    def extract(self, metadata: Iterable[tuple[str, str]] | None) -> SpanContext | None:
        """The caller's span context from gRPC metadata (``traceparent``/``tracestate``)."""
        if not metadata:
            return None
        carrier = None
        for key, value in metadata:
            if key == "traceparent" or key == "tracestate":
                if carrier is None:
                    carrier = {}
                carrier[key] = value
        if carrier is None or "traceparent" not in carrier:
            return None
        parent = get_current_span(self._propagator.extract(carrier))
        context = parent.get_span_context()
        return context if context.is_valid else None

    def start(self, model: str, parent: SpanContext | None, method: str) -> RequestSpan | None:
        """Decide whether to trace a request for ``model``; its span handle or None.

        Parent-based: a sampled parent is followed, an unsampled one is not;
        without a parent the scope's ratio decides on the new trace id.
        """
        scope = self.settings.model_scopes.get(model) or self.settings.global_scope
        if scope.off:
            return None
        if parent is not None:
            if not parent.trace_flags.sampled:
                return None
            trace_id = parent.trace_id
        else:
            trace_id = _getrandbits(128) or 1
            if not scope.always and (trace_id & _MASK64) >= scope.bound:
                return None
        if not scope.counter.take():
            return None
        return RequestSpan(trace_id, _getrandbits(64) or 1, parent, method, model, scope.tensors)

    def finish(self, span: RequestSpan, error: BaseException | None = None) -> None:
        """Export ``span``'s server span and its phase spans (never raises)."""
        try:
            self._finish(span, error)
        except Exception:
            log.exception("tracing: could not record the spans of a %s request", span.method)

    def _finish(self, span: RequestSpan, error: BaseException | None) -> None:
        sink = self._sink
        if sink is None:
            return
        end = _perf_ns()
        parent = span.parent
        request = span.request
        if error is None:
            status, error_type, message = 0, "", ""
        else:
            code = getattr(error, "code", None)
            status = _GRPC_CODES.get(getattr(code, "value", ""), 2)
            error_type = type(error).__name__
            message = getattr(error, "message", None) or str(error)
        received = queued = input_end = infer_end = output_end = batch_size = 0
        request_id = ""
        tensors: tuple[tuple[str, tuple[int, ...], str], ...] = ()
        if request is not None:
            request_id = request.id
            timings = request.timings
            batch_size = timings.batch_size
            received = timings.received_ns
            if received:
                queued = received + timings.queue_ns
                input_end = queued + timings.compute_input_ns
                infer_end = input_end + timings.compute_infer_ns
                output_end = infer_end + timings.compute_output_ns
            if span.tensors:
                tensors = tuple(
                    (name, tuple(array.shape), str(array.dtype))
                    for name, array in request.inputs.items()
                )
        sink.add(
            RequestSpanRecord(
                trace_id=span.trace_id,
                span_id=span.span_id,
                parent_span_id=0 if parent is None else parent.span_id,
                parent_remote=parent is not None and parent.is_remote,
                method=span.method,
                model=span.model,
                version=span.version,
                request_id=request_id,
                batch_size=batch_size,
                start_ns=span.start_ns,
                end_ns=end,
                received_ns=received,
                queued_ns=queued,
                input_end_ns=input_end,
                infer_end_ns=infer_end,
                output_end_ns=output_end,
                send_ns=span.send_ns,
                grpc_status=status,
                error_type=error_type,
                error_message=message,
                tensors=tensors,
                principal=span.principal,
            )
        )

    # -- per batch (loop thread, from the observer) --------------------------------------

    def batch_span(self, record: BatchRecord) -> None:
        """One span for a batch holding traced requests, linked to each of their spans."""
        sink = self._sink
        if sink is None:
            return
        start = record.start_ns
        input_end = start + record.compute_input_ns
        infer_end = input_end + record.compute_infer_ns
        error = record.error
        sink.add(
            BatchSpanRecord(
                trace_id=_getrandbits(128) or 1,
                span_id=_getrandbits(64) or 1,
                model=record.model,
                version=record.version,
                size=record.size,
                padded_size=record.padded_size,
                request_count=record.request_count,
                device=record.device,
                instance=record.instance,
                start_ns=start,
                input_end_ns=input_end,
                infer_end_ns=infer_end,
                end_ns=infer_end + record.compute_output_ns,
                links=tuple(ids for ids in record.trace_contexts if type(ids) is tuple),
                error_type="" if error is None else type(error).__name__,
                error_message="" if error is None else error.message,
            )
        )

    # -- lifecycle -----------------------------------------------------------------------

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Export every span recorded so far (blocking; tests and shutdown)."""
        sink = self._sink
        return True if sink is None else sink.flush(timeout_s)

    def shutdown(self, timeout_s: float = 5.0) -> None:
        """Stop tracing, export what is queued (bounded by ``timeout_s``), close the exporter.

        An unreachable collector cannot hold this up: past ``timeout_s`` the exporter
        is shut down, which aborts its retries, and what is left is dropped.
        """
        with self._lock:
            self._closed = True
            self.armed = False
            sink, self._sink = self._sink, None
        if sink is not None:
            sink.shutdown(timeout_s)

    @property
    def exporting(self) -> bool:
        """Whether an export pipeline exists (created when tracing is first armed)."""
        return self._sink is not None


#: StatusCode value (batchwire.core.errors) -> numeric gRPC status code.
_GRPC_CODES = {
    "CANCELLED": 1,
    "INVALID_ARGUMENT": 3,
    "DEADLINE_EXCEEDED": 4,
    "NOT_FOUND": 5,
    "PERMISSION_DENIED": 7,
    "RESOURCE_EXHAUSTED": 8,
    "FAILED_PRECONDITION": 9,
    "UNIMPLEMENTED": 12,
    "INTERNAL": 13,
    "UNAVAILABLE": 14,
    "UNAUTHENTICATED": 16,
}
