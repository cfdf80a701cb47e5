"""Span export bookkeeping: dropped spans are counted exactly and logged sparingly."""

from __future__ import annotations

import logging
import threading

from batchwire.telemetry.span_export import DropCounter


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
