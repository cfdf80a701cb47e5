"""Span records as OpenTelemetry SDK ``ReadableSpan`` objects, for SDK span exporters.

Used where an SDK exporter object takes the spans: the console exporter (in the
exporter process) and an exporter handed to the server in-process (tests, programs
that embed the server). Only public SDK API: ``ReadableSpan``, ``Resource``,
``InstrumentationScope`` and the exporter's ``export``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, TraceFlags
from opentelemetry.trace.status import Status, StatusCode

from batchwire import __version__
from batchwire.telemetry.span_records import SpanRecord, describe

__all__ = ["SdkRecordExporter", "SpanBuilder", "instrumentation_scope", "resource"]

_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_UNSET = Status(StatusCode.UNSET)


def resource(service_name: str) -> Resource:
    """The SDK's resource for ``service_name`` (OTEL_RESOURCE_ATTRIBUTES merged in)."""
    return Resource.create({"service.name": service_name})


def instrumentation_scope() -> InstrumentationScope:
    return InstrumentationScope("batchwire", __version__)


class SpanBuilder:
    """Turns records into ReadableSpans for one service (resource) and clock offset."""

    def __init__(self, service_name: str, epoch_offset_ns: int) -> None:
        self.resource = resource(service_name)
        self.scope = instrumentation_scope()
        self.offset = epoch_offset_ns

    def build(self, records: Iterable[SpanRecord]) -> list[ReadableSpan]:
        """One span per record, in order."""
        return [self.span(record) for record in records]

    def span(self, record: SpanRecord) -> ReadableSpan:
        """The span of one record."""
        fields = describe(record, self.offset)
        parent = None
        if fields.parent_span_id:
            parent = SpanContext(
                fields.trace_id, fields.parent_span_id, fields.parent_remote, _SAMPLED
            )
        return ReadableSpan(
            name=fields.name,
            context=SpanContext(fields.trace_id, fields.span_id, False, _SAMPLED),
            parent=parent,
            resource=self.resource,
            attributes=dict(fields.attributes),
            events=[Event(name, None, time) for name, time in fields.events],
            links=[Link(SpanContext(t, s, False, _SAMPLED)) for t, s in fields.links],
            kind=SpanKind.SERVER if fields.server else SpanKind.INTERNAL,
            status=_UNSET if fields.error is None else Status(StatusCode.ERROR, fields.error),
            start_time=fields.start_ns,
            end_time=fields.end_ns,
            instrumentation_scope=self.scope,
        )


class SdkRecordExporter:
    """Exports records through an SDK ``SpanExporter`` (its public ``export``)."""

    def __init__(self, exporter: SpanExporter, builder: SpanBuilder) -> None:
        self.exporter = exporter
        self._builder = builder

    def export(self, records: Sequence[SpanRecord]) -> None:
        self.exporter.export(self._builder.build(records))

    def shutdown(self) -> None:
        self.exporter.shutdown()
