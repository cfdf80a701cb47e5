"""Where span records go: an exporter process (the server's way), or an exporter in-process.

Why a process: building spans and encoding them is pure Python, microseconds per
span. Done by a thread of the server (as the SDK's ``BatchSpanProcessor`` does), it
contends with the event loop for the GIL, and the loop gives the GIL away at every
call that releases it (a TorchScript forward, a gRPC send); getting it back from a
busy Python thread takes up to the 5 ms switch interval (measured: a 22 us model
call took 12 ms with one busy Python thread beside it). So the server sends its
:mod:`~batchwire.telemetry.span_records` to ``python -m
batchwire.telemetry.exporter_process``, a child process that encodes and exports
them.

:class:`ProcessSink` (server side). Concurrency: :meth:`~ProcessSink.add` runs on the
event-loop thread and appends the record's fields to the next message (under a lock, as
:meth:`~ProcessSink.flush` may be called from another thread); a full message
(``BATCH_RECORDS``), or the message a ``BATCH_DELAY_S`` timer finds, goes to a
writer thread, which pickles it and writes it to the child's stdin (blocking there,
never on the loop). When the writer is more than ``MAX_PENDING_BATCHES`` behind, or
the child is gone, records are dropped and counted: an unreachable or slow collector
loses spans, never requests. Acknowledgements of flushes come back on a separate pipe
(the child's stdout stays the server's, for the console exporter).

Protocol (length-prefixed pickles on stdin): ``("config", (TraceConfig,
epoch_offset_ns))`` first, then ``("spans", RecordMessage)``, ``("flush", (token,
timeout_s))`` (answered on the ack pipe with ``(token, True/False)``) and ``("stop",
timeout_s)``. EOF means the server is gone.

:class:`ExportQueue` is the exporting side, in the exporter process and in-process
alike: one thread that merges what it is given into exports of up to
``EXPORT_SPANS`` spans. :class:`LocalSink` feeds one in this process with an SDK
exporter object handed to the server (tests, programs that embed the server);
:class:`NullSink` drops records (exporter ``none``).
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
from collections.abc import Sequence
from typing import IO, TYPE_CHECKING, Any, NamedTuple, Protocol

from batchwire.telemetry.span_records import BatchSpanRecord, RequestSpanRecord, SpanRecord
from batchwire.telemetry.trace_config import TraceExporter

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter

    from batchwire.telemetry.trace_config import TraceConfig

log = logging.getLogger(__name__)

#: Records per message to the exporter process: each message has a fixed cost there
#: (a pickle, a wake-up of the export thread).
BATCH_RECORDS = 1024
#: A partial message waits at most this long before it is sent.
BATCH_DELAY_S = 0.2
#: Messages waiting for the writer beyond this are dropped (1024 * 16 = 16k spans).
MAX_PENDING_BATCHES = 16
#: Spans per export request (``OTEL_BSP_MAX_EXPORT_BATCH_SIZE`` wins): each export
#: has a fixed cost on both ends (docs/observability.md).
EXPORT_SPANS = 1024
#: How long a partial export is held open for more spans (``OTEL_BSP_SCHEDULE_DELAY``
#: wins), on top of the server's own ``BATCH_DELAY_S``.
EXPORT_HOLD_S = 0.2
#: Spans waiting for export beyond this are dropped (``OTEL_BSP_MAX_QUEUE_SIZE`` wins).
EXPORT_QUEUE_SPANS = 16384
_HEADER = struct.Struct("<I")


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


class RecordExporter(Protocol):
    """Exports records (logging its own failures) until shut down."""

    def export(self, records: Sequence[SpanRecord]) -> None: ...

    def shutdown(self) -> None: ...


class OtlpRecordExporter:
    """Records encoded by :class:`~batchwire.telemetry.otlp_encoding.OtlpEncoder`, sent
    by :mod:`~batchwire.telemetry.otlp_transport` (OTLP/gRPC or OTLP/HTTP)."""

    def __init__(self, config: TraceConfig, epoch_offset_ns: int) -> None:
        from batchwire.telemetry.otlp_encoding import OtlpEncoder
        from batchwire.telemetry.otlp_transport import OtlpSettings, otlp_transport
        from batchwire.telemetry.sdk_spans import instrumentation_scope, resource

        service = resource(config.service_name)
        scope = instrumentation_scope()
        self.encoder = OtlpEncoder(
            service.attributes,
            scope.name,
            scope.version or "",
            epoch_offset_ns,
            service.schema_url or "",
        )
        self.transport = otlp_transport(OtlpSettings.resolve(config.exporter, config.endpoint))

    def export(self, records: Sequence[SpanRecord]) -> None:
        self.transport.export(self.encoder.encode(records), len(records))

    def shutdown(self) -> None:
        self.transport.shutdown()


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


#: Queued by :meth:`ExportQueue.flush`: export what is held now.
_HURRY: list[SpanRecord] = []


class ExportQueue:
    """Exports records from one thread, in exports of up to ``max_spans`` spans.

    :meth:`add` (any thread, never blocks) queues a list of records; beyond
    ``OTEL_BSP_MAX_QUEUE_SIZE`` spans waiting, it drops them (counted). The export
    thread merges lists into exports of up to ``max_spans`` spans, holding a partial
    one open for at most ``hold_s``: fewer, larger exports cost the exporter and the
    collector less per span. A flush or a stop exports what is held at once.
    """

    def __init__(self, exporter: RecordExporter) -> None:
        self.exporter = exporter
        self.max_spans = _env_positive_int("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", EXPORT_SPANS)
        self.hold_s = _env_positive_int("OTEL_BSP_SCHEDULE_DELAY", int(EXPORT_HOLD_S * 1000)) / 1000
        self.max_queued = _env_positive_int("OTEL_BSP_MAX_QUEUE_SIZE", EXPORT_QUEUE_SPANS)
        self.dropped = DropCounter("collector too slow")
        self._queued = 0
        self._lock = threading.Lock()
        self._queue: queue.Queue[list[SpanRecord] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="span-export", daemon=True)
        self._thread.start()

    def add(self, records: list[SpanRecord]) -> None:
        with self._lock:
            room = self._queued + len(records) <= self.max_queued
            if room:
                self._queued += len(records)
        if room:
            self._queue.put(records)
        else:
            self.dropped.add(len(records))

    def _run(self) -> None:
        # Every item taken from the queue is marked done only once its spans are
        # exported, so that flush() (queue.join) means "exported".
        get = self._queue.get
        stopping = False
        while not stopping:
            held = get()
            taken = 1
            if held is None:
                stopping = True
                held = []
            elif held is not _HURRY:
                held = list(held)
                deadline = time.monotonic() + self.hold_s
                while len(held) < self.max_spans:
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
                    held += item
            for start in range(0, len(held), self.max_spans):
                self._export(held[start : start + self.max_spans])
            with self._lock:
                self._queued -= len(held)
            for _ in range(taken):
                self._queue.task_done()

    def _export(self, records: list[SpanRecord]) -> None:
        try:
            self.exporter.export(records)
        except Exception:  # a bug here must cost these spans, not the export thread
            log.exception("tracing: exporting %d span(s) failed", len(records))

    def flush(self, timeout_s: float) -> bool:
        """Export everything queued so far; False if that took longer than ``timeout_s``."""
        self._queue.put(_HURRY)
        done = threading.Thread(target=self._queue.join, daemon=True)
        done.start()
        done.join(timeout_s)
        return not done.is_alive()

    def shutdown(self, timeout_s: float) -> None:
        """Export what is queued (bounded by ``timeout_s``), then stop the exporter."""
        if not self.flush(timeout_s):
            log.warning(
                "tracing: spans not exported within %.1f s of shutdown are dropped", timeout_s
            )
        self.exporter.shutdown()  # aborts a retry in progress
        self._queue.put(None)
        self._thread.join(1.0)


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
    """Exports through an SDK exporter object on a thread of this process."""

    def __init__(self, exporter: SpanExporter, service_name: str, epoch_offset_ns: int) -> None:
        from batchwire.telemetry.sdk_spans import SdkRecordExporter, SpanBuilder

        builder = SpanBuilder(service_name, epoch_offset_ns)
        self._queue = ExportQueue(SdkRecordExporter(exporter, builder))

    def add(self, record: SpanRecord) -> None:
        self._queue.add([record])

    def flush(self, timeout_s: float) -> bool:
        return self._queue.flush(timeout_s)

    def shutdown(self, timeout_s: float) -> None:
        self._queue.shutdown(timeout_s)


class RecordMessage(NamedTuple):
    """Records on their way to the exporter process: each as the plain tuple of its
    fields (see :meth:`ProcessSink.add`), in the list of its type."""

    requests: list[tuple[Any, ...]]
    batches: list[tuple[Any, ...]]

    @property
    def size(self) -> int:
        """How many records it holds."""
        return len(self.requests) + len(self.batches)

    def records(self) -> list[SpanRecord]:
        """The records again (requests, then batches)."""
        return [
            *map(RequestSpanRecord._make, self.requests),
            *map(BatchSpanRecord._make, self.batches),
        ]


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


def _read_message(stream: IO[bytes]) -> tuple[Any, Any]:
    """The next message: (kind, payload) on stdin, (token, ok) on the ack pipe (see the
    protocol above); raises EOFError when the other side has gone."""
    (size,) = _HEADER.unpack(_read_exact(stream, _HEADER.size))
    first, second = pickle.loads(_read_exact(stream, size))
    return first, second


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
        assert self._proc.stdin is not None  # stdin=PIPE
        self._stdin: IO[bytes] = self._proc.stdin
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._pending = RecordMessage([], [])
        self._flushes = 0
        self._outbox: queue.SimpleQueue[tuple[str, Any] | None] = queue.SimpleQueue()
        self._alive = True
        self.dropped = DropCounter("exporter process slow or gone")
        self._outbox.put(("config", (config, epoch_offset_ns)))
        self._writer = threading.Thread(target=self._write, name="span-export-writer", daemon=True)
        self._writer.start()
        log.info("tracing: span exporter process %d started", self._proc.pid)

    # -- event loop ----------------------------------------------------------------------

    def add(self, record: SpanRecord) -> None:
        # A plain tuple of the record's fields, in its type's list: a NamedTuple is
        # always tracked by the garbage collector, and a thousand of them waiting here
        # for 200 ms get promoted and make full collections of the server's heap more
        # frequent; a tuple of numbers and strings is untracked at its first
        # collection. It pickles five times faster too.
        with self._lock:
            pending = self._pending
            (pending.requests if type(record) is RequestSpanRecord else pending.batches).append(
                tuple(record)
            )
            count = pending.size
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
            pending, self._pending = self._pending, RecordMessage([], [])
        if not pending.size:
            return
        if not self._alive or self._outbox.qsize() > MAX_PENDING_BATCHES:
            self.dropped.add(pending.size)
            return
        self._outbox.put(("spans", pending))

    # -- writer thread ---------------------------------------------------------------------

    def _write(self) -> None:
        stdin = self._stdin
        while (item := self._outbox.get()) is not None:
            kind, payload = item
            if not self._alive:
                if kind == "spans":
                    self.dropped.add(payload.size)
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
                        answered, ok = _read_message(self._acks)
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


def record_exporter(config: TraceConfig, epoch_offset_ns: int) -> RecordExporter:
    """The exporter process's exporter for ``config.exporter`` (not ``none``)."""
    if config.exporter == TraceExporter.console:
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        from batchwire.telemetry.sdk_spans import SdkRecordExporter, SpanBuilder

        console = ConsoleSpanExporter(service_name=config.service_name)
        return SdkRecordExporter(console, SpanBuilder(config.service_name, epoch_offset_ns))
    return OtlpRecordExporter(config, epoch_offset_ns)


def serve_exporter(source: IO[bytes], acks: IO[bytes]) -> None:
    """The exporter process: read records from ``source``, export their spans."""
    kind, payload = _read_message(source)
    if kind != "config":
        raise RuntimeError(f"expected the config message first, got {kind!r}")
    config, offset = payload
    export = ExportQueue(record_exporter(config, offset))
    stop_timeout = 5.0
    while True:
        try:
            kind, payload = _read_message(source)
        except EOFError:  # the server has gone
            break
        if kind == "spans":
            export.add(payload.records())
        elif kind == "flush":
            token, timeout_s = payload
            _write_message(acks, (token, export.flush(timeout_s)))
        elif kind == "stop":
            stop_timeout = payload
            break
    export.shutdown(stop_timeout)
