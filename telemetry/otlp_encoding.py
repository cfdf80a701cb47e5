"""Span records straight to a serialized OTLP ``ExportTraceServiceRequest``.

Each record's span, as :func:`~batchwire.telemetry.span_records.describe` states it,
is written in protobuf's wire format by hand, against the field numbers of the
versioned, public ``opentelemetry/proto/trace/v1/trace.proto``; the resource and the
instrumentation scope, the same in every request, are serialized once with the
``opentelemetry.proto`` messages. The pieces that repeat from span to span (an
attribute with its value, an event's name) are kept as bytes and reused.

Why by hand: filling ``opentelemetry.proto`` messages costs about 19 us per request
span, the wire writer about a quarter of that, and the exporter process shares two
cores with the server (docs/observability.md, "How spans leave the server"). The
result says field for field what the SDK's encoder says
(``tests/telemetry/test_telemetry_otlp_encoding.py``), and protobuf parses it into
the same messages whatever order the fields are written in.

Rules of the wire format used here: a field is a tag (``number << 3 | wire type``,
a varint) then its value; wire type 0 is a varint, 1 eight little-endian bytes, 2 a
varint length then that many bytes, 5 four little-endian bytes. Repeated message
fields are the field written once per element; proto3 scalars equal to their default
are left out, as every protobuf serializer does.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping, Sequence

from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import SpanFlags, Status

from batchwire.telemetry.span_records import AttributeValue, SpanFields, SpanRecord, describe

__all__ = ["OtlpEncoder", "set_value"]

_ERROR = Status.StatusCode.STATUS_CODE_ERROR
#: span.flags as the SDK sets them: whether the parent is remote is known, and is it.
_LOCAL = SpanFlags.SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK
_REMOTE = _LOCAL | SpanFlags.SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK

_FIXED64 = struct.Struct("<Q").pack
_FIXED32 = struct.Struct("<I").pack
_DOUBLE = struct.Struct("<d").pack
#: Attribute and event encodings kept for reuse; cleared when this many are held, so
#: values that never repeat (request ids) cannot grow it without bound.
_CACHE_LIMIT = 4096


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
        target.array_value.SetInParent()  # present even when empty, as the SDK sets it
        values = target.array_value.values
        for item in value:
            set_value(values.add(), item)
    else:
        target.string_value = str(value)


def _varint(value: int) -> bytes:
    """``value`` as a protobuf varint; a negative one as its 64-bit two's complement."""
    if value < 0:
        value += 1 << 64
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(tag: int, payload: bytes) -> bytes:
    """A length-delimited field: ``tag`` (already shifted, with wire type 2), then ``payload``."""
    return _varint(tag) + _varint(len(payload)) + payload


def _any_value(value: AttributeValue | object) -> bytes:
    """The serialized AnyValue of ``value``, chosen as :func:`set_value` chooses."""
    if isinstance(value, str):
        return _field(0x0A, value.encode())  # string_value = 1
    if isinstance(value, bool):
        return b"\x10\x01" if value else b"\x10\x00"  # bool_value = 2 (set, even False)
    if isinstance(value, int):
        return b"\x18" + _varint(value)  # int_value = 3
    if isinstance(value, float):
        return b"\x21" + _DOUBLE(value)  # double_value = 4
    if isinstance(value, Sequence):
        items = b"".join(_field(0x0A, _any_value(item)) for item in value)  # values = 1
        return _field(0x2A, items)  # array_value = 5
    return _field(0x0A, str(value).encode())


def _attribute(key: str, value: AttributeValue) -> bytes:
    """``attributes = 9`` holding KeyValue{key = 1, value = 2}."""
    return _field(0x4A, _field(0x0A, key.encode()) + _field(0x12, _any_value(value)))


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
        resource = Resource()
        for key, value in resource_attributes.items():
            set_value(resource.attributes.add(key=key).value, value)
        # ResourceSpans: resource = 1, schema_url = 3 (scope_spans = 2 is added per
        # request); ScopeSpans: scope = 1 (spans = 2 follow it).
        self._resource = _field(0x0A, resource.SerializeToString())
        if schema_url:
            self._resource += _field(0x1A, schema_url.encode())
        scope = InstrumentationScope(name=scope_name, version=scope_version)
        self._scope = _field(0x0A, scope.SerializeToString())
        self._offset = epoch_offset_ns
        self._attributes: dict[tuple[str, type, object], bytes] = {}
        self._events: dict[str, tuple[bytes, bytes]] = {}
        #: Span names: RPC method names and "batch", a handful.
        self._names: dict[str, bytes] = {}

    def encode(self, records: Iterable[SpanRecord]) -> bytes:
        """One serialized request holding every record's span, in order."""
        offset = self._offset
        spans = b"".join([_field(0x12, self._span(describe(r, offset))) for r in records])
        scope_spans = _field(0x12, self._scope + spans)  # ResourceSpans.scope_spans = 2
        return _field(0x0A, self._resource + scope_spans)  # resource_spans = 1

    def _span(self, fields: SpanFields) -> bytes:
        """One Span message, field by field, as the SDK's encoder fills it."""
        parts = [
            b"\x0a\x10",  # trace_id = 1, 16 bytes
            fields.trace_id.to_bytes(16, "big"),
            b"\x12\x08",  # span_id = 2, 8 bytes
            fields.span_id.to_bytes(8, "big"),
        ]
        append = parts.append
        parent = fields.parent_span_id
        if parent:
            append(b"\x22\x08")  # parent_span_id = 4
            append(parent.to_bytes(8, "big"))
        named = self._names.get(fields.name)
        if named is None:
            named = self._names[fields.name] = _field(0x2A, fields.name.encode())  # name = 5
        append(named)
        # kind = 6: SPAN_KIND_SERVER is 2, SPAN_KIND_INTERNAL 1.
        append(b"\x30\x02" if fields.server else b"\x30\x01")
        append(b"\x39")  # start_time_unix_nano = 7, fixed64
        append(_FIXED64(fields.start_ns))
        append(b"\x41")  # end_time_unix_nano = 8, fixed64
        append(_FIXED64(fields.end_ns))
        cache = self._attributes
        for key, value in fields.attributes:
            if isinstance(value, list):  # a tensor's shape: unhashable, seldom repeated
                append(_attribute(key, value))
                continue
            # The type is part of the key: True == 1 and 1 == 1.0 in a dict.
            cache_key = (key, type(value), value)
            encoded = cache.get(cache_key)
            if encoded is None:
                if len(cache) >= _CACHE_LIMIT:
                    cache.clear()
                encoded = cache[cache_key] = _attribute(key, value)
            append(encoded)
        events = self._events
        for name, time in fields.events:
            # events = 11: Event{time_unix_nano = 1 (fixed64), name = 2}, whose length
            # does not depend on the time.
            pieces = events.get(name)
            if pieces is None:
                encoded_name = _field(0x12, name.encode())
                head = b"\x5a" + _varint(9 + len(encoded_name)) + b"\x09"
                pieces = events[name] = (head, encoded_name)
            append(pieces[0])
            append(_FIXED64(time))
            append(pieces[1])
        for trace_id, span_id in fields.links:
            # links = 13: Link{trace_id = 1, span_id = 2, flags = 6 (fixed32)}.
            append(b"\x6a\x21\x0a\x10")  # 33 bytes: 18 + 10 + 5
            append(trace_id.to_bytes(16, "big"))
            append(b"\x12\x08")
            append(span_id.to_bytes(8, "big"))
            append(b"\x35" + _FIXED32(_LOCAL))
        if fields.error is not None:
            status = b"\x18" + _varint(_ERROR)  # Status.code = 3
            if fields.error:
                status = _field(0x12, fields.error.encode()) + status  # Status.message = 2
            append(_field(0x7A, status))  # status = 15
        flags = _REMOTE if parent and fields.parent_remote else _LOCAL
        append(b"\x85\x01" + _FIXED32(flags))  # flags = 16, fixed32
        return b"".join(parts)
