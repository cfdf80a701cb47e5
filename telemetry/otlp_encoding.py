"""Span records straight to a serialized OTLP ``ExportTraceServiceRequest``.

Each record's span is filled field by field into the messages of the versioned,
public ``opentelemetry.proto`` package, from
:func:`~batchwire.telemetry.span_records.describe`, and the request is serialized
once. The SDK's way, a ``ReadableSpan`` per record and then its OTLP encoder, costs
several times as much (docs/observability.md, "How spans leave the server"). The
result says field for field what the SDK's encoder says
(``tests/telemetry/test_telemetry_otlp_encoding.py``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, Span, SpanFlags, Status

from batchwire.telemetry.span_records import AttributeValue, SpanRecord, describe

__all__ = ["OtlpEncoder"]

_SERVER = Span.SpanKind.SPAN_KIND_SERVER
_INTERNAL = Span.SpanKind.SPAN_KIND_INTERNAL
_ERROR = Status.StatusCode.STATUS_CODE_ERROR
#: span.flags as the SDK sets them: whether the parent is remote is known, and is it.
_LOCAL = SpanFlags.SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK
_REMOTE = _LOCAL | SpanFlags.SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK


def set_value(target: AnyValue, value: AttributeValue | object) -> None:
    """Fill OTLP's AnyValue with ``value`` (str, bool, int, float, or a sequence of them)."""
    if isinstance(value, str):
        target.string_value = value
    elif isinstance(value, bool):
        target.bool_value = value
    elif isinstance(value, int):
        target.int_value = value
    elif isinstance(value, float):
        target.double_value = value
    elif isinstance(value, Sequence):
        values = target.array_value.values
        for item in value:
            set_value(values.add(), item)
    else:
        target.string_value = str(value)


class OtlpEncoder:
    """Encodes span records of one service into serialized ExportTraceServiceRequests."""

    def __init__(
        self,
        resource_attributes: Mapping[str, object],
        scope_name: str,
        scope_version: str,
        epoch_offset_ns: int,
        schema_url: str = "",
    ) -> None:
        # One ResourceSpans holding one ScopeSpans, kept to copy from: every request
        # carries them, only the spans change.
        self._template = ResourceSpans(schema_url=schema_url)
        for key, value in resource_attributes.items():
            set_value(self._template.resource.attributes.add(key=key).value, value)
        scope = self._template.scope_spans.add().scope
        scope.name = scope_name
        scope.version = scope_version
        self._offset = epoch_offset_ns

    def encode(self, records: Iterable[SpanRecord]) -> bytes:
        """One serialized request holding every record's span, in order."""
        request = ExportTraceServiceRequest()
        resource_spans = request.resource_spans.add()
        resource_spans.CopyFrom(self._template)
        add = resource_spans.scope_spans[0].spans.add
        offset = self._offset
        for record in records:
            _fill(add(), record, offset)
        return request.SerializeToString()


def _fill(span: Span, record: SpanRecord, offset: int) -> None:
    """``record``'s span, field by field, as the SDK's encoder fills it."""
    fields = describe(record, offset)
    span.trace_id = fields.trace_id.to_bytes(16, "big")
    span.span_id = fields.span_id.to_bytes(8, "big")
    if fields.parent_span_id:
        span.parent_span_id = fields.parent_span_id.to_bytes(8, "big")
    span.flags = _REMOTE if fields.parent_span_id and fields.parent_remote else _LOCAL
    span.name = fields.name
    span.kind = _SERVER if fields.server else _INTERNAL
    span.start_time_unix_nano = fields.start_ns
    span.end_time_unix_nano = fields.end_ns
    add_attribute = span.attributes.add
    for key, value in fields.attributes:
        set_value(add_attribute(key=key).value, value)
    add_event = span.events.add
    for name, time in fields.events:
        add_event(name=name, time_unix_nano=time)
    add_link = span.links.add
    for trace_id, span_id in fields.links:
        add_link(
            trace_id=trace_id.to_bytes(16, "big"), span_id=span_id.to_bytes(8, "big"), flags=_LOCAL
        )
    if fields.error is not None:
        span.status.code = _ERROR
        span.status.message = fields.error
