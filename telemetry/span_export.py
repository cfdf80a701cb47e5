"""Where span records go: an exporter process (the server's way), or an exporter in-process.

Why a process: building spans and encoding them for OTLP is pure Python, tens of
microseconds per span. Done by a thread of the server (as the SDK's
``BatchSpanProcessor`` does), it contends with the event loop for the GIL, and the
loop gives the GIL away at every call that releases it (a TorchScript forward, a
gRPC send); getting it back from a busy Python thread takes up to the 5 ms switch
interval (measured: a 22 us model call took 12 ms with one busy Python thread
beside it). So the server sends compact :mod:`~batchwire.telemetry.span_records`
to ``python -m batchwire.telemetry.exporter_process``, a child process that builds the
spans and exports them with the configured OpenTelemetry exporter and a
``BatchSpanProcessor``.

:class:`ProcessSink` (parent side). Concurrency: :meth:`~ProcessSink.add` runs on the
event-loop thread and packs the record into rows of bytes
(:class:`~batchwire.telemetry.record_wire.RecordPacker`, about 3 us, under a lock, as
:meth:`flush` may be called from another thread); full messages (or the message a
200 ms timer finds) go to a writer thread, which writes them to the child's stdin
(blocking there, never on the loop). Packing on the loop, a record at a time, rather
than in the writer thread: the writer would hold the GIL for a whole message at once
while the loop waits for it. When the writer is more than ``MAX_PENDING_BATCHES``
behind, or the child is gone, records are dropped and counted: an unreachable or
slow collector loses spans, never requests. Acknowledgements of flushes come back on
a separate pipe (the child's stdout stays the server's, for the console exporter).

Protocol (length-prefixed pickles on stdin): ``("config", TraceConfig, epoch_offset_ns)``
first, then ``("spans", PackedRecords)`` (:mod:`~batchwire.telemetry.record_wire`),
``("flush", timeout_s)`` (answered on the ack pipe with ``True``/``False``) and
``("stop", timeout_s)``. EOF means the server is gone.

:class:`LocalSink` builds spans on the calling thread and feeds a ``BatchSpanProcessor``
in this process: for an exporter *object* handed to the server (tests, programs that
embed the server). :class:`NullSink` drops records (exporter ``none``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import queue
import select
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import IO, TYPE_CHECKING, Protocol
from urllib.parse import urlsplit

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from batchwire import __version__
from batchwire.telemetry.record_wire import PackedRecords, RecordPacker, unpack_records
from batchwire.telemetry.span_records import SpanBuilder, SpanRecord

if TYPE_CHECKING:
    from batchwire.telemetry.otlp_records import Block
    from batchwire.telemetry.tracing import TraceConfig

log = logging.getLogger(__name__)

#: Records per message to the exporter process. Each message costs the exporter
#: process about 0.4 ms however many records it holds (measured, encoding messages of
#: mixed shapes: 2.9 us per span in messages of 183, 1.5 in 512, 1.25 in 1024).
BATCH_RECORDS = 1024
#: A partial batch waits at most this long before it is sent.
BATCH_DELAY_S = 0.2
#: Batches waiting for the writer beyond this are dropped (1024 * 16 = 16k spans).
MAX_PENDING_BATCHES = 16
_HEADER = struct.Struct("<I")


def make_exporter(config: TraceConfig) -> SpanExporter:
    """The SDK exporter for the exporters that take the ReadableSpan path (console, otlp-http).

    ``otlp-grpc`` takes :class:`RecordExport` instead, and ``none`` exports nothing
    (:class:`NullSink`).
    """
    if config.exporter == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter(service_name=config.service_name)
    if config.exporter != "otlp-http":
        raise ValueError(f"exporter '{config.exporter}' does not take the ReadableSpan path")
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    endpoint = config.endpoint
    if endpoint is not None:
        if "://" not in endpoint:
            endpoint = f"http://{endpoint}"
        if urlsplit(endpoint).path in ("", "/"):
            endpoint = endpoint.rstrip("/") + "/v1/traces"
    return OTLPSpanExporter(endpoint=endpoint)


def grpc_endpoint(endpoint: str | None) -> str | None:
    """None (the exporter reads OTEL_EXPORTER_OTLP_*), or a URL for a bare ``host:port``."""
    if endpoint is not None and "://" not in endpoint:
        return f"http://{endpoint}"  # a bare host:port means plaintext, as collectors listen
    return endpoint


def make_processor(exporter: SpanExporter) -> BatchSpanProcessor:
    """A BatchSpanProcessor with batchwire's defaults (the OTEL_BSP_* variables win)."""
    delay = os.environ.get("OTEL_BSP_SCHEDULE_DELAY")
    size = os.environ.get("OTEL_BSP_MAX_QUEUE_SIZE")
    return BatchSpanProcessor(
        exporter,
        max_queue_size=None if size else 16384,
        schedule_delay_millis=None if delay else 1000,
    )


def span_builder(service_name: str, epoch_offset_ns: int) -> SpanBuilder:
    resource = Resource.create({"service.name": service_name})
    return SpanBuilder(resource, InstrumentationScope("batchwire", __version__), epoch_offset_ns)


def shutdown_processor(processor: BatchSpanProcessor, timeout_s: float) -> None:
    """Export what is queued, then stop; bounded by ``timeout_s`` even when the collector hangs."""
    worker = threading.Thread(target=processor.shutdown, name="span-shutdown", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        log.warning("tracing: spans not exported within %.1f s of shutdown are dropped", timeout_s)
        try:
            processor.span_exporter.shutdown()  # aborts the exporter's retries
        except Exception:
            log.debug("tracing: exporter shutdown failed", exc_info=True)
        worker.join(1.0)


class DropCounter:
    """Counts spans dropped on purpose and logs the first drop, then one line per
    ``LOG_EVERY`` more (a slow collector must not flood the log as well). Thread-safe:
    the event loop and a writer thread both drop."""

    LOG_EVERY = 10_000

    def __init__(self, what: str) -> None:
        self._what = what
        self._lock = threading.Lock()
        self.count = 0

    def add(self, spans: int) -> None:
        with self._lock:
            before = self.count
            self.count = after = before + spans
        if before == 0 or before // self.LOG_EVERY != after // self.LOG_EVERY:
            log.warning("tracing: %d span(s) dropped so far (%s)", after, self._what)


class SpanSink(Protocol):
    """Receives span records from the event loop."""

    def add(self, record: SpanRecord) -> None: ...

    def flush(self, timeout_s: float) -> bool: ...

    def shutdown(self, timeout_s: float) -> None: ...


class NullSink:
    """Drops every record (exporter ``none``: sampling and trace ids in logs, no export)."""

    def add(self, record: SpanRecord) -> None:
        return None

    def flush(self, timeout_s: float) -> bool:
        return True

    def shutdown(self, timeout_s: float) -> None:
        return None


class LocalSink:
    """Builds each span at once and queues it on a BatchSpanProcessor in this process."""

    def __init__(self, exporter: SpanExporter, builder: SpanBuilder) -> None:
        self._processor = make_processor(exporter)
        self._builder = builder

    def add(self, record: SpanRecord) -> None:
        self._processor.on_end(self._builder.span(record))

    def flush(self, timeout_s: float) -> bool:
        return self._processor.force_flush(int(timeout_s * 1000))

    def shutdown(self, timeout_s: float) -> None:
        shutdown_processor(self._processor, timeout_s)


def _write_message(stream: IO[bytes], message: object) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_HEADER.pack(len(data)))
    stream.write(data)
    stream.flush()


def _read_exact(stream: IO[bytes], size: int) -> bytes:
    chunks = []
    while size:
        chunk = stream.read(size)
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def _read_message(stream: IO[bytes]) -> object:
    """The next message; raises EOFError when the other side has gone."""
    (size,) = _HEADER.unpack(_read_exact(stream, _HEADER.size))
    return pickle.loads(_read_exact(stream, size))


class ProcessSink:
    """Sends records in batches to an exporter process (see the module docstring)."""

    def __init__(self, config: TraceConfig, epoch_offset_ns: int) -> None:
        ack_read, ack_write = os.pipe()
        try:
            self._proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "batchwire.telemetry.exporter_process",
                    "--ack-fd",
                    str(ack_write),
                ],
                stdin=subprocess.PIPE,
                pass_fds=(ack_write,),
            )
        finally:
            os.close(ack_write)
        # Unbuffered: select() must see every acknowledgement that has not been read.
        self._acks = os.fdopen(ack_read, "rb", buffering=0)
        self._stdin: IO[bytes] = self._proc.stdin  # type: ignore[assignment]
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._packer = RecordPacker()
        self._flushes = 0
        self._outbox: queue.SimpleQueue[tuple[str, object] | None] = queue.SimpleQueue()
        self._alive = True
        self.dropped = DropCounter("exporter process slow or gone")
        self._outbox.put(("config", (config, epoch_offset_ns)))
        self._writer = threading.Thread(target=self._write, name="span-export-writer", daemon=True)
        self._writer.start()
        log.info("tracing: span exporter process %d started", self._proc.pid)

    # -- event loop ----------------------------------------------------------------------

    def add(self, record: SpanRecord) -> None:
        with self._lock:
            packer = self._packer
            packer.add(record)
            count = packer.count
        if count >= BATCH_RECORDS:
            self._send_pending()
        elif count == 1:
            self._arm_timer()

    def _arm_timer(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a direct call): send at once
            self._send_pending()
            return
        loop.call_later(BATCH_DELAY_S, self._send_pending)

    def _send_pending(self) -> None:
        with self._lock:
            packer = self._packer
            if not packer.count:
                return
            self._packer = RecordPacker()
        if not self._alive or self._outbox.qsize() > MAX_PENDING_BATCHES:
            self.dropped.add(packer.count)
            return
        self._outbox.put(("spans", packer.take()))

    # -- writer thread ---------------------------------------------------------------------

    def _write(self) -> None:
        stdin = self._stdin
        while (item := self._outbox.get()) is not None:
            if not self._alive:
                if item[0] == "spans":
                    self.dropped.add(item[1].count)  # type: ignore[union-attr]
                continue
            try:
                _write_message(stdin, item)
            except (OSError, ValueError):
                self._alive = False
                log.error("tracing: the span exporter process has gone; spans are dropped")
        with contextlib.suppress(OSError):
            stdin.close()

    # -- any thread ------------------------------------------------------------------------

    def flush(self, timeout_s: float) -> bool:
        """Send what is pending and wait until the exporter process has exported it."""
        self._send_pending()
        with self._flush_lock:
            if not self._alive:
                return False
            self._flushes += 1
            token = self._flushes
            self._outbox.put(("flush", (token, timeout_s)))
            deadline = time.monotonic() + timeout_s + 5.0
            while time.monotonic() < deadline:
                ready, _, _ = select.select([self._acks], [], [], 0.5)
                if ready:
                    try:
                        answered, ok = _read_message(self._acks)  # type: ignore[misc]
                    except EOFError:
                        self._alive = False
                        return False
                    if answered == token:  # else: the late answer to a timed-out flush
                        return bool(ok)
                elif self._proc.poll() is not None:
                    self._alive = False
                    return False
            return False

    def shutdown(self, timeout_s: float) -> None:
        """Export what is queued (bounded by ``timeout_s``) and stop the exporter process."""
        self._send_pending()
        self._outbox.put(("stop", timeout_s))
        self._outbox.put(None)
        self._writer.join(timeout_s)
        try:
            self._proc.wait(timeout_s + 2.0)
        except subprocess.TimeoutExpired:
            log.warning("tracing: the span exporter process did not stop; killing it")
            self._proc.kill()
            self._proc.wait()
        self._alive = False
        self._acks.close()


# -- the exporter process --------------------------------------------------------------


#: Spans per OTLP export request on the record path (``OTEL_BSP_MAX_EXPORT_BATCH_SIZE``
#: wins). Each export has a fixed cost on both ends; measured here (exporter and a
#: Python receiver, CPU per traced request): 20 + 11 us in exports of 256 spans,
#: 14-18 + 5-6 us in exports of 1024.
EXPORT_SPANS = 1024
#: How long the record path holds a partial export open for more spans
#: (``OTEL_BSP_SCHEDULE_DELAY`` wins), on top of the server's own ``BATCH_DELAY_S``.
EXPORT_HOLD_S = 0.2
#: Queued by :meth:`RecordExport.flush`: export what is held now.
_HURRY = object()


def _env_positive_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if not value:
        return default
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        log.warning("tracing: %s=%r is not a positive integer; using %d", name, value, default)
        return default
    return number


class RecordExport:
    """The exporter process's OTLP/gRPC path: records encoded straight to protobuf
    (:mod:`batchwire.telemetry.otlp_records`) and exported by one thread, so that
    reading the server's messages never waits for the collector.

    The export thread encodes the server's messages (up to ``BATCH_RECORDS`` records
    each) and merges them into export requests of up to ``EXPORT_SPANS`` spans,
    holding a partial one open for at most ``EXPORT_HOLD_S``: fewer, larger requests
    cost the exporter and the collector less per span. A flush or a stop exports what
    is held at once.
    """

    def __init__(self, config: TraceConfig, builder: SpanBuilder) -> None:
        from batchwire.telemetry.otlp_records import OtlpRecordEncoder, record_exporter

        self.encoder = OtlpRecordEncoder(builder.resource, builder.scope, builder.offset)
        self.exporter = record_exporter(grpc_endpoint(config.endpoint), self.encoder)
        self.max_spans = _env_positive_int("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", EXPORT_SPANS)
        self.hold_s = _env_positive_int("OTEL_BSP_SCHEDULE_DELAY", int(EXPORT_HOLD_S * 1000)) / 1000
        self._queue: queue.Queue[PackedRecords | object | None] = queue.Queue(MAX_PENDING_BATCHES)
        self._thread = threading.Thread(target=self._run, name="record-export", daemon=True)
        self._thread.start()
        self.dropped = DropCounter("collector too slow")

    def add(self, records: PackedRecords) -> None:
        try:
            self._queue.put_nowait(records)
        except queue.Full:
            self.dropped.add(records.count)

    def _run(self) -> None:
        # Export thread. Every item taken from the queue is marked done only once its
        # spans are exported, so that flush() (queue.join) means "exported".
        get = self._queue.get
        stopping = False
        while not stopping:
            first = get()
            taken = 1
            held: list[Block] = []
            if first is None:
                stopping = True
            elif first is not _HURRY:
                held += self._encoded(first)  # type: ignore[arg-type]
                count = sum(block.count for block in held)
                deadline = time.monotonic() + self.hold_s
                while count < self.max_spans:
                    try:
                        item = get(timeout=max(deadline - time.monotonic(), 0.0))
                    except queue.Empty:
                        break
                    taken += 1
                    if item is None:
                        stopping = True
                        break
                    if item is _HURRY:
                        break
                    blocks = self._encoded(item)  # type: ignore[arg-type]
                    held += blocks
                    count += sum(block.count for block in blocks)
            for request in _requests(held, self.max_spans):
                self._export(request)
            for _ in range(taken):
                self._queue.task_done()

    def _encoded(self, records: PackedRecords) -> list[Block]:
        try:
            return self.encoder.blocks(records)
        except Exception:  # a bug here must cost these spans, not the export thread
            log.exception("tracing: encoding %d span(s) failed", records.count)
            self.dropped.add(records.count)
            return []

    def _export(self, blocks: list[Block]) -> None:
        try:
            self.exporter.export(blocks)  # logs its own failures
        except Exception:
            log.exception(
                "tracing: exporting %d span(s) failed", sum(block.count for block in blocks)
            )

    def flush(self, timeout_s: float) -> bool:
        with contextlib.suppress(queue.Full):
            self._queue.put(_HURRY, timeout=timeout_s)
        done = threading.Thread(target=self._queue.join, daemon=True)
        done.start()
        done.join(timeout_s)
        return not done.is_alive()

    def shutdown(self, timeout_s: float) -> None:
        if not self.flush(timeout_s):
            log.warning(
                "tracing: spans not exported within %.1f s of shutdown are dropped", timeout_s
            )
        self.exporter.shutdown()  # aborts a retry in progress
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(None)
        self._thread.join(1.0)


def _requests(blocks: list[Block], max_spans: int) -> Iterator[list[Block]]:
    """``blocks`` cut into export requests of at most ``max_spans`` spans each, a block
    split between its spans where a request fills up."""
    request: list[Block] = []
    room = max_spans
    for block in blocks:
        while block.count > room:
            cut = room * block.row_size
            request.append(block._replace(data=block.data[:cut], count=room))
            yield request
            block = block._replace(data=block.data[cut:], count=block.count - room)
            request, room = [], max_spans
        if block.count:
            request.append(block)
            room -= block.count
        if room == 0:
            yield request
            request, room = [], max_spans
    if request:
        yield request


def serve_exporter(source: IO[bytes], acks: IO[bytes]) -> None:
    """The exporter process: read records from ``source``, export their spans."""
    kind, payload = _read_message(source)  # type: ignore[misc]
    if kind != "config":
        raise RuntimeError(f"expected the config message first, got {kind!r}")
    config, offset = payload
    builder = span_builder(config.service_name, offset)
    direct = RecordExport(config, builder) if config.exporter == "otlp-grpc" else None
    processor = None if direct is not None else make_processor(make_exporter(config))
    stop_timeout = 5.0
    while True:
        try:
            kind, payload = _read_message(source)  # type: ignore[misc]
        except EOFError:  # the server has gone
            break
        if kind == "spans":
            if direct is not None:
                direct.add(payload)
            else:
                on_end = processor.on_end  # type: ignore[union-attr]
                for record in unpack_records(payload):
                    on_end(builder.span(record))
        elif kind == "flush":
            token, timeout_s = payload
            if direct is not None:
                ok = direct.flush(timeout_s)
            else:
                ok = processor.force_flush(int(timeout_s * 1000))  # type: ignore[union-attr]
            _write_message(acks, (token, ok))
        elif kind == "stop":
            stop_timeout = payload
            break
    if direct is not None:
        direct.shutdown(stop_timeout)
    else:
        shutdown_processor(processor, stop_timeout)  # type: ignore[arg-type]
