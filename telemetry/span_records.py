"""Span records, and the one table that turns a record into a span's fields.

The event loop records what a traced request or batch did as a small named tuple of
numbers and strings (a microsecond or two); the spans themselves are built later,
wherever the records are exported (:mod:`batchwire.telemetry.span_export`). Records
pickle as they are, so they cross to the exporter process.

:func:`describe` is the only place that names span attributes and events: the OTLP
encoder (:mod:`batchwire.telemetry.otlp_encoding`) and the SDK span builder
(:mod:`batchwire.telemetry.sdk_spans`) both encode what it returns.

Timestamps in records are ``time.perf_counter_ns`` values; ``epoch_offset_ns`` (the
Unix epoch minus perf_counter, captured once by the server) turns them into span
times.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

__all__ = [
    "AttributeValue",
    "BatchSpanRecord",
    "RequestSpanRecord",
    "SpanFields",
    "SpanRecord",
    "describe",
]

#: What an attribute holds (OTLP AnyValue's scalar kinds, or a list of ints).
AttributeValue = str | bool | int | float | Sequence[int]


class RequestSpanRecord(NamedTuple):
    """One traced request: its SERVER span, phases as events."""

    trace_id: int
    span_id: int
    #: The caller's span (0: none) and whether it came from another process.
    parent_span_id: int
    parent_remote: bool
    method: str
    model: str
    version: str
    request_id: str
    #: Items in the batch the request ran in (0: it never ran).
    batch_size: int
    start_ns: int
    end_ns: int
    #: Phase timestamps (0: the phase did not happen): entered the queue, batch
    #: started, batch assembled, model done, outputs split, response encoding.
    received_ns: int
    queued_ns: int
    input_end_ns: int
    infer_end_ns: int
    output_end_ns: int
    send_ns: int
    #: Numeric gRPC status code, and for failures the error's type and message.
    grpc_status: int
    error_type: str
    error_message: str
    #: trace_level TENSORS: (input name, shape, dtype) per input.
    tensors: tuple[tuple[str, tuple[int, ...], str], ...]
    #: The authenticated principal that sent it ("" when none is configured).
    principal: str = ""


class BatchSpanRecord(NamedTuple):
    """One executed batch holding traced requests: a span linked to each request span."""

    trace_id: int
    span_id: int
    model: str
    version: str
    size: int
    padded_size: int
    request_count: int
    device: str
    instance: int
    start_ns: int
    input_end_ns: int
    infer_end_ns: int
    end_ns: int
    #: (trace_id, span_id) of every traced request span in the batch.
    links: tuple[tuple[int, int], ...]
    error_type: str
    error_message: str


#: Either kind of record.
SpanRecord = RequestSpanRecord | BatchSpanRecord


# -- the table -------------------------------------------------------------------------

#: Attributes every request span carries, whatever its record says.
RPC_ATTRIBUTES: tuple[tuple[str, AttributeValue], ...] = (
    ("rpc.system", "grpc"),
    ("rpc.service", "inference.GRPCInferenceService"),
)
#: Request span attributes from record fields: (key, field, kept when the value is
#: empty: "", 0).
REQUEST_ATTRIBUTES: tuple[tuple[str, str, bool], ...] = (
    ("rpc.method", "method", True),
    ("batchwire.model.name", "model", True),
    ("rpc.grpc.status_code", "grpc_status", True),
    ("batchwire.model.version", "version", False),
    ("batchwire.request.id", "request_id", False),
    ("batchwire.batch.size", "batch_size", False),
    # OpenTelemetry's semantic convention for the authenticated caller.
    ("enduser.id", "principal", False),
)
#: trace_level TENSORS: per input, its shape and dtype under these keys.
TENSOR_SHAPE = "batchwire.input.{}.shape"
TENSOR_DTYPE = "batchwire.input.{}.dtype"
#: Batch span attributes: (key, field), always present.
BATCH_ATTRIBUTES: tuple[tuple[str, str], ...] = (
    ("batchwire.model.name", "model"),
    ("batchwire.model.version", "version"),
    ("batchwire.batch.size", "size"),
    ("batchwire.batch.padded_size", "padded_size"),
    ("batchwire.batch.request_count", "request_count"),
    ("batchwire.device", "device"),
    ("batchwire.instance", "instance"),
)
#: Set, with ERROR status, on a span whose request or batch failed.
ERROR_TYPE = "error.type"
#: Request span events (name, record field) of a request whose batch ran...
COMPUTE_EVENTS: tuple[tuple[str, str], ...] = (
    ("queue_start", "received_ns"),
    ("compute_start", "queued_ns"),
    ("compute_input_end", "input_end_ns"),
    ("compute_output_start", "infer_end_ns"),
    ("compute_end", "output_end_ns"),
)
#: ... of one that failed before its batch ran (queue timeout, shutdown...) ...
QUEUE_EVENTS: tuple[tuple[str, str], ...] = (
    ("queue_start", "received_ns"),
    ("queue_end", "queued_ns"),
)
#: ... and last, when its response was encoded.
SEND_EVENT = ("response_send", "send_ns")
BATCH_EVENTS: tuple[tuple[str, str], ...] = (
    ("compute_input_end", "input_end_ns"),
    ("compute_output_start", "infer_end_ns"),
)
BATCH_SPAN_NAME = "batch"


class SpanFields(NamedTuple):
    """A span as every encoder sees it; times are Unix epoch ns."""

    name: str
    #: SERVER (a request) or INTERNAL (a batch).
    server: bool
    trace_id: int
    span_id: int
    #: 0: no parent.
    parent_span_id: int
    parent_remote: bool
    start_ns: int
    end_ns: int
    attributes: list[tuple[str, AttributeValue]]
    #: (name, time) in time order.
    events: list[tuple[str, int]]
    #: (trace_id, span_id) of linked spans (in this process, sampled).
    links: tuple[tuple[int, int], ...]
    #: None: status UNSET; else status ERROR with this description.
    error: str | None


def describe(record: SpanRecord, epoch_offset_ns: int) -> SpanFields:
    """The span of ``record``, its perf_counter times moved to the epoch by the offset."""
    if isinstance(record, RequestSpanRecord):
        return _request(record, epoch_offset_ns)
    return _batch(record, epoch_offset_ns)


def _request(r: RequestSpanRecord, offset: int) -> SpanFields:
    attributes = list(RPC_ATTRIBUTES)
    for key, field, always in REQUEST_ATTRIBUTES:
        value = getattr(r, field)
        if always or value:
            attributes.append((key, value))
    for name, shape, dtype in r.tensors:
        attributes.append((TENSOR_SHAPE.format(name), list(shape)))
        attributes.append((TENSOR_DTYPE.format(name), dtype))
    phases: tuple[tuple[str, str], ...] = ()
    if r.received_ns:
        phases = COMPUTE_EVENTS if r.batch_size else QUEUE_EVENTS
    if r.send_ns:
        phases += (SEND_EVENT,)
    return SpanFields(
        r.method,
        True,
        r.trace_id,
        r.span_id,
        r.parent_span_id,
        r.parent_remote,
        r.start_ns + offset,
        r.end_ns + offset,
        _with_error(attributes, r.error_type),
        [(name, getattr(r, field) + offset) for name, field in phases],
        (),
        r.error_message if r.error_type else None,
    )


def _batch(r: BatchSpanRecord, offset: int) -> SpanFields:
    attributes = [(key, getattr(r, field)) for key, field in BATCH_ATTRIBUTES]
    return SpanFields(
        BATCH_SPAN_NAME,
        False,
        r.trace_id,
        r.span_id,
        0,
        False,
        r.start_ns + offset,
        r.end_ns + offset,
        _with_error(attributes, r.error_type),
        [(name, getattr(r, field) + offset) for name, field in BATCH_EVENTS],
        r.links,
        r.error_message if r.error_type else None,
    )


def _with_error(
    attributes: list[tuple[str, AttributeValue]], error_type: str
) -> list[tuple[str, AttributeValue]]:
    if error_type:
        attributes.append((ERROR_TYPE, error_type))
    return attributes
