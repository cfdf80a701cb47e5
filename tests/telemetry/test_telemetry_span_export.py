"""Span export bookkeeping: dropped spans are counted exactly and logged sparingly; the
export queue merges the server's messages into larger OTLP exports of bounded size."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

import pytest
from testsupport import request_span_record

from batchwire.telemetry.receiver import OtlpReceiver
from batchwire.telemetry.span_export import (
    EXPORT_SPANS,
    DropCounter,
    ExportQueue,
    OtlpRecordExporter,
)
from batchwire.telemetry.span_records import SpanRecord
from batchwire.telemetry.trace_config import TraceConfig


def test_drops_are_counted_and_logged_first_then_every_ten_thousand(caplog) -> None:
    counter = DropCounter("collector too slow")
    with caplog.at_level(logging.WARNING, logger="batchwire.telemetry.span_export"):
        for _ in range(100):  # 100 batches of 256: 25,600 spans
            counter.add(256)
    assert counter.count == 25_600
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "tracing: 256 span(s) dropped so far (collector too slow)",
        "tracing: 10240 span(s) dropped so far (collector too slow)",
        "tracing: 20224 span(s) dropped so far (collector too slow)",
    ]


def test_drops_from_several_threads_add_up() -> None:
    counter = DropCounter("exporter process slow or gone")

    def drop() -> None:
        for _ in range(5000):
            counter.add(1)

    threads = [threading.Thread(target=drop) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert counter.count == 20_000


def _records(count: int, first_span: int = 1) -> list[SpanRecord]:
    """A server message of ``count`` request spans."""
    return [request_span_record(span_id=i) for i in range(first_span, first_span + count)]


def _export_queue(receiver: OtlpReceiver) -> ExportQueue:
    config = TraceConfig.resolve(
        mode="always", exporter="otlp-grpc", endpoint=f"127.0.0.1:{receiver.port}", environ={}
    )
    return ExportQueue(OtlpRecordExporter(config, 0))


def test_server_messages_merge_into_one_export_request(monkeypatch) -> None:
    # A hold far longer than the test: the export below happens because it is full.
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "600000")
    with OtlpReceiver() as receiver:
        export = _export_queue(receiver)
        assert export.max_spans == EXPORT_SPANS
        size = EXPORT_SPANS // 4  # messages the timer cut short
        for index in range(4):
            export.add(_records(size, 1 + index * size))
        spans = receiver.wait_for(lambda spans: len(spans) >= EXPORT_SPANS, timeout=30)
        export.shutdown(10)
    assert receiver.exports == 1
    assert sorted(int.from_bytes(s.span_id, "big") for s in spans) == list(
        range(1, EXPORT_SPANS + 1)
    )


def test_flush_exports_a_partial_request_at_once(monkeypatch) -> None:
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "600000")  # would hold for 10 minutes
    with OtlpReceiver() as receiver:
        export = _export_queue(receiver)
        export.add(_records(10))
        assert export.flush(20), "flush did not cut the hold short"
        assert len(receiver.spans) == 10 and receiver.exports == 1
        export.add(_records(5, 11))
        export.shutdown(20)  # exports what is held, then stops
        assert len(receiver.spans) == 15 and receiver.exports == 2


def test_exports_never_exceed_the_configured_size(monkeypatch) -> None:
    monkeypatch.setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "100")
    with OtlpReceiver() as receiver:
        export = _export_queue(receiver)
        assert export.max_spans == 100
        export.add(_records(256))
        assert export.flush(20)
        export.shutdown(10)
        assert len(receiver.spans) == 256
        assert receiver.exports == 3  # 100 + 100 + 56


@pytest.mark.parametrize("value", ["0", "-3", "many"])
def test_a_bad_export_size_falls_back_to_the_default(monkeypatch, caplog, value) -> None:
    monkeypatch.setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", value)
    with OtlpReceiver() as receiver, caplog.at_level(logging.WARNING):
        export = _export_queue(receiver)
        export.shutdown(5)
    assert export.max_spans == EXPORT_SPANS
    assert f"OTEL_BSP_MAX_EXPORT_BATCH_SIZE={value!r} is not a positive integer" in caplog.text


class _Blocked:
    """An exporter that holds the export thread until released, counting what it got."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.exported: list[SpanRecord] = []

    def export(self, records: Sequence[SpanRecord]) -> None:
        self.release.wait(20)
        self.exported += records

    def shutdown(self) -> None:
        self.release.set()


def test_spans_beyond_the_queue_size_are_dropped_and_counted(monkeypatch) -> None:
    """A collector that does not keep up costs spans, counted, and never blocks add()."""
    monkeypatch.setenv("OTEL_BSP_MAX_QUEUE_SIZE", "100")
    exporter = _Blocked()
    export = ExportQueue(exporter)
    for first in range(1, 301, 30):  # ten messages of 30 spans: 300 in all
        export.add(_records(30, first))
    assert export.dropped.count == 300 - 90  # three messages fit in 100
    exporter.release.set()
    assert export.flush(20)
    export.shutdown(5)
    assert len(exporter.exported) == 90


class _Failing(_Blocked):
    """Raises on the first export (a bug in encoding, say), then exports."""

    def export(self, records: Sequence[SpanRecord]) -> None:
        if not self.release.is_set():
            self.release.set()
            raise ValueError("cannot encode")
        self.exported += records


def test_an_export_that_raises_costs_its_spans_not_the_export_thread(caplog) -> None:
    exporter = _Failing()
    export = ExportQueue(exporter)
    with caplog.at_level(logging.ERROR):
        export.add(_records(3))
        assert export.flush(20)
        export.add(_records(2, 10))
        assert export.flush(20)
    export.shutdown(5)
    assert [r.span_id for r in exporter.exported] == [10, 11]
    assert "exporting 3 span(s) failed" in caplog.text
