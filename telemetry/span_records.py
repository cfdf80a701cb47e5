"""Compact span records, and their conversion into OpenTelemetry spans.

The event loop records what a traced request or batch did as a small tuple of
numbers and strings (a few microseconds); everything costly -- building
:class:`~opentelemetry.sdk.trace.ReadableSpan` objects, their events and
attributes, and encoding them for export -- happens later, wherever the records
are exported (see :mod:`batchwire.telemetry.span_export`). Records pickle cheaply,
so they can cross to an exporter process.

Timestamps in records are ``time.perf_counter_ns`` values; ``epoch_offset_ns``
(the Unix epoch minus perf_counter, captured once by the server) turns them into
span times.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import NamedTuple

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, TraceFlags
from opentelemetry.trace.status import Status, StatusCode

__all__ = ["BatchSpanRecord", "RequestSpanRecord", "SpanBuilder", "SpanRecord"]

_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_OK = Status(StatusCode.UNSET)


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


class SpanBuilder:
    """Turns records into ReadableSpans for one service (resource) and clock offset."""

    def __init__(self, resource: Resource, scope: InstrumentationScope, epoch_offset_ns: int):
        self.resource = resource
        self.scope = scope
        self.offset = epoch_offset_ns

    def build(self, records: Iterable[SpanRecord]) -> Iterator[ReadableSpan]:
        """One span per record, in order."""
        return map(self.span, records)

    def span(self, record: SpanRecord) -> ReadableSpan:
        """The span of one record."""
        if type(record) is RequestSpanRecord:
            return self.request_span(record)
        return self.batch_span(record)  # type: ignore[arg-type]

    def request_span(self, r: RequestSpanRecord) -> ReadableSpan:
        offset = self.offset
        attributes: dict[str, object] = {
            "rpc.system": "grpc",
            "rpc.service": "inference.GRPCInferenceService",
            "rpc.method": r.method,
            "batchwire.model.name": r.model,
            "rpc.grpc.status_code": r.grpc_status,
        }
        if r.version:
            attributes["batchwire.model.version"] = r.version
        if r.request_id:
            attributes["batchwire.request.id"] = r.request_id
        if r.batch_size:
            attributes["batchwire.batch.size"] = r.batch_size
        for name, shape, dtype in r.tensors:
            attributes[f"batchwire.input.{name}.shape"] = list(shape)
            attributes[f"batchwire.input.{name}.dtype"] = dtype
        if r.error_type:
            attributes["error.type"] = r.error_type
            status = Status(StatusCode.ERROR, r.error_message)
        else:
            status = _OK
        events = []
        if r.received_ns:
            events.append(Event("queue_start", None, r.received_ns + offset))
            if r.batch_size:
                events += (
                    Event("compute_start", None, r.queued_ns + offset),
                    Event("compute_input_end", None, r.input_end_ns + offset),
                    Event("compute_output_start", None, r.infer_end_ns + offset),
                    Event("compute_end", None, r.output_end_ns + offset),
                )
            else:  # failed before its batch ran (queue timeout, shutdown...)
                events.append(Event("queue_end", None, r.queued_ns + offset))
        if r.send_ns:
            events.append(Event("response_send", None, r.send_ns + offset))
        parent = None
        if r.parent_span_id:
            parent = SpanContext(r.trace_id, r.parent_span_id, r.parent_remote, _SAMPLED)
        return ReadableSpan(
            name=r.method,
            context=SpanContext(r.trace_id, r.span_id, False, _SAMPLED),
            parent=parent,
            resource=self.resource,
            attributes=attributes,
            events=events,
            kind=SpanKind.SERVER,
            status=status,
            start_time=r.start_ns + offset,
            end_time=r.end_ns + offset,
            instrumentation_scope=self.scope,
        )

    def batch_span(self, r: BatchSpanRecord) -> ReadableSpan:
        offset = self.offset
        attributes: dict[str, object] = {
            "batchwire.model.name": r.model,
            "batchwire.model.version": r.version,
            "batchwire.batch.size": r.size,
            "batchwire.batch.padded_size": r.padded_size,
            "batchwire.batch.request_count": r.request_count,
            "batchwire.device": r.device,
            "batchwire.instance": r.instance,
        }
        if r.error_type:
            attributes["error.type"] = r.error_type
            status = Status(StatusCode.ERROR, r.error_message)
        else:
            status = _OK
        return ReadableSpan(
            name="batch",
            context=SpanContext(r.trace_id, r.span_id, False, _SAMPLED),
            parent=None,
            resource=self.resource,
            attributes=attributes,
            events=(
                Event("compute_input_end", None, r.input_end_ns + offset),
                Event("compute_output_start", None, r.infer_end_ns + offset),
            ),
            links=[Link(SpanContext(t, s, False, _SAMPLED)) for t, s in r.links],
            kind=SpanKind.INTERNAL,
            status=status,
            start_time=r.start_ns + offset,
            end_time=r.end_ns + offset,
            instrumentation_scope=self.scope,
        )
