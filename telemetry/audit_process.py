"""The audit log written by a child process, so that hashing and JSON never hold the
server's GIL: :class:`AuditLogProcess` in the server, ``python -m
batchwire.telemetry.audit_process`` (:func:`main`) in the child.

Why: a record costs its writer about 8 us of Python (SHA-256 of every tensor, the
JSON line, the chain hash) and a file write. In a writer *thread* all of it holds the
server's GIL, time the event loop cannot run, and a disk that stalls stalls a thread
of the server. The child does that work in its own interpreter; the server's side of
a record is a tuple of its fields and tensor bytes, pickled in bursts (about 1.6 us a
record). Measured figures: docs/governance.md.

How
---
- :class:`AuditLogProcess` is an :class:`~batchwire.telemetry.audit_log.AuditLog`
  whose thread sends instead of writing: the same queue, ``submit`` and policies on
  the event loop; the thread takes bursts of events and writes each burst to the
  child's stdin as one length-prefixed pickle (a pipe between the server and the
  process it started: nothing else can write to it).
- The child runs an :class:`AuditLog` on the directory, with the same options: files,
  chain, checkpoints, rotation, retention and write errors are all its. Its queue
  holds the packed events as they arrived and it encodes them from their bytes
  (:func:`packed_body`: the same text as
  :func:`~batchwire.telemetry.audit_records.request_body`, without numpy). It reads
  one burst at a time and submits its events; under policy ``block`` it waits
  when its own queue is full, so the pipe fills, the server's thread blocks on it,
  the server's queue fills and requests wait: back-pressure end to end. Under
  ``drop`` either queue drops and counts.
- Counters: the child reports its own (written, dropped, write errors, last error,
  queue depth) on its stdout as a JSON line every :data:`STATUS_SECONDS`; the server
  adds their increments to its counters, so ``written``, ``dropped``, ``write_errors``,
  ``last_error`` and ``depth`` read as the whole log's.
- Start: the child opens the log before it reads anything; :meth:`AuditLogProcess.start`
  waits for its first status line, ``{"ready": true}`` or ``{"error": "..."}`` (then
  AuditLogError with the child's words: an unwritable directory, a bad key).
- The child exits when its stdin closes: :meth:`~AuditLog.close` closes it once every
  queued event is sent; the child writes what it has, then the closing checkpoint.
  When the server dies, the pipe closes all the same: the child still closes the log.
- A child that dies (killed, crashed): the server logs an ERROR and starts a new one
  every :data:`~batchwire.telemetry.audit_log.RETRY_SECONDS`; the new child continues
  the chain in a new file (a torn last line is recovered as on any restart). Under
  ``block`` the burst that could not be sent is sent to the new child; under ``drop``
  it is dropped and counted as ``write_error``. What the dead child had received but
  not yet written is lost uncounted (at most a pipe's and a queue's worth): its file
  ends without a checkpoint, which the next file's ``open`` record states (verify
  shows the log as consistent, and ``seq`` continues from the last line written).

Threads (server side): the event loop (``submit``), the sender thread, and a status
thread reading the child's lines; counters change under the log's condition lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import IO, Any

import numpy as np

from batchwire.telemetry.audit_log import RETRY_SECONDS, AuditLog, AuditLogError, load_signing_key
from batchwire.telemetry.audit_records import (
    AuditEvent,
    array_json,
    event_strings,
    request_text,
    tensor_bytes,
    tensor_json,
)

__all__ = ["STATUS_SECONDS", "AuditLogProcess", "main"]

log = logging.getLogger(__name__)

#: How often the child reports its counters.
STATUS_SECONDS = 0.25
#: Seconds start() waits for the child to open the log.
START_TIMEOUT_S = 60.0
_FRAME = struct.Struct("<I")
_COUNTERS = ("written", "write_errors")
_DROP_REASONS = ("queue_full", "write_error", "closed")


def _pack_tensors(tensors: tuple[tuple[str, str, np.ndarray], ...]) -> tuple[Any, ...]:
    packed = []
    for name, datatype, array in tensors:
        try:
            data: bytes | str = bytes(tensor_bytes(array, datatype))
        except (TypeError, ValueError):
            # Not encodable (a dtype that is not the datatype's): its entry, error
            # included, is written here; payloads do not matter for it.
            data = array_json(name, datatype, array, False, False)
        packed.append((name, datatype, array.shape, data))
    return tuple(packed)


def pack_event(event: AuditEvent) -> tuple[Any, ...]:
    """``event`` as plain values and each tensor's wire bytes (what crosses the pipe)."""
    return (
        event.received_ns,
        event.answered_ns,
        event_strings(event),
        _pack_tensors(event.inputs),
        _pack_tensors(event.outputs),
        event.batch_id,
        event.queue_ns,
        event.compute_ns,
        tuple(event.redact),
        event.cached,
    )


def packed_body(packed: tuple[Any, ...], payloads: bool) -> str:
    """The request record body of a packed event: :func:`~batchwire.telemetry.
    audit_records.request_body` of the event, from its wire bytes (no numpy)."""
    (received, answered, strings, inputs, outputs, batch_id, queue_ns, compute_ns, redact,
     cached) = packed  # fmt: skip
    hidden = frozenset(redact)

    def entries(tensors: tuple[Any, ...]) -> str:
        return ",".join(
            data
            if isinstance(data, str)
            else tensor_json(name, datatype, shape, data, payloads, name in hidden)
            for name, datatype, shape, data in tensors
        )

    return request_text(
        received, answered, strings, entries(inputs), entries(outputs), batch_id, queue_ns,
        compute_ns, cached,
    )  # fmt: skip


class _PackedLog(AuditLog):
    """The child's log: its queue holds packed events, encoded without numpy."""

    def _encode(self, event: AuditEvent) -> str:
        return packed_body(event, self.payloads)  # type: ignore[arg-type]


class AuditLogProcess(AuditLog):
    """An audit log whose records a child process writes (see the module docstring).

    Takes AuditLog's options, with the signing key as a file (``signing_key_path``, read
    by the child; loaded here too, so that a bad key fails start-up at once), and the
    server's ``log_level`` and ``log_format`` for the child's log records.
    """

    def __init__(
        self,
        directory: Path,
        *,
        signing_key_path: Path | None = None,
        log_level: str = "INFO",
        log_format: str = "text",
        **options: Any,
    ) -> None:
        if "signing_key" in options or "clock" in options:
            raise TypeError("AuditLogProcess takes signing_key_path, and no clock")
        key = load_signing_key(signing_key_path) if signing_key_path is not None else None
        super().__init__(directory, signing_key=key, **options)
        self._arguments = {
            "directory": str(self.directory),
            "signing_key": str(signing_key_path) if signing_key_path is not None else None,
            "options": options,
            "log_level": log_level,
            "log_format": log_format,
        }
        self._child: subprocess.Popen[bytes] | None = None
        self._reporter: threading.Thread | None = None
        #: The counters the current child last reported (increments are applied).
        self._reported: dict[str, Any] = {}
        self._child_depth = 0
        self._unsent: list[AuditEvent] = []

    @property
    def writer_pid(self) -> int | None:
        """The process id of the child writing the log now (None between children)."""
        child = self._child
        return child.pid if child is not None else None

    # -- counters ------------------------------------------------------------------------

    @property
    def depth(self) -> int:
        """Events queued here and in the child, not yet written."""
        return len(self._queue) + self._child_depth

    def _apply(self, status: dict[str, Any]) -> None:
        """Add the increments of the child's counters since its last report."""
        with self._cond:
            before = self._reported
            for name in _COUNTERS:
                setattr(self, name, getattr(self, name) + status[name] - before.get(name, 0))
            for reason in _DROP_REASONS:
                self.dropped[reason] += status["dropped"][reason] - before.get(reason, 0)
            if status["last_error"]:
                self.last_error = status["last_error"]
            self._child_depth = status["depth"]
            self._reported = {
                **{name: status[name] for name in _COUNTERS},
                **{reason: status["dropped"][reason] for reason in _DROP_REASONS},
            }

    # -- the child -----------------------------------------------------------------------

    def _spawn(self) -> str | None:
        """Start a child and wait for it to open the log; its error text, None when ready."""
        child = subprocess.Popen(
            [sys.executable, "-m", "batchwire.telemetry.audit_process"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env={**os.environ, "BATCHWIRE_AUDIT_PROCESS": json.dumps(self._arguments)},
        )
        assert child.stdout is not None
        ready, _, _ = select.select([child.stdout], [], [], START_TIMEOUT_S)
        line = child.stdout.readline() if ready else b""
        try:
            first = json.loads(line) if line else {}
        except ValueError:
            first = {}
        if first.get("ready") is not True:
            child.kill()
            child.wait()
            return str(
                first.get("error")
                or f"the audit log process exited with status {child.returncode} before "
                "opening the log"
            )
        self._child = child
        self._reported = {}
        self._reporter = threading.Thread(
            target=self._read_status, args=(child.stdout,), name="batchwire-audit-status"
        )
        self._reporter.daemon = True
        self._reporter.start()
        return None

    def _read_status(self, stream: IO[bytes]) -> None:
        for line in stream:
            try:
                self._apply(json.loads(line))
            except (ValueError, KeyError, TypeError):
                log.warning("audit log: the writer process sent an unreadable status: %r", line)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start the child (it opens the log) and the sender thread; AuditLogError with
        the child's words when it cannot open the log."""
        if self._thread is not None:
            raise RuntimeError("the audit log is already started")
        self._loop = loop
        problem = self._spawn()
        if problem is not None:
            raise AuditLogError(problem)
        self._checkpoint_at = self._retention_checked = time.monotonic()
        self._accepting = True
        self._thread = threading.Thread(target=self._run, name="batchwire-audit-send")
        self._thread.daemon = True
        self._thread.start()

    def _run(self) -> None:
        try:
            while True:
                events, wake, state = self._wait_for_work()
                self._wake(wake)
                if state == "abort":
                    self._abandon()
                    return
                self._unsent.extend(events)
                if self._unsent and (not self._failing or time.monotonic() >= self._retry_at):
                    self._send()
                if state == "final":
                    return
        except BaseException:
            log.exception("audit log: the sender stopped on an unexpected error")
            self._abandon()
        finally:
            self._stop_child()

    def _send(self) -> None:
        if self._child is None:
            problem = self._spawn()
            if problem is not None:
                self._lost(problem)
                return
            log.info("audit log: a new writer process continues the log")
        child = self._child
        assert child is not None and child.stdin is not None
        frame = pickle.dumps([pack_event(e) for e in self._unsent], protocol=5)
        try:
            child.stdin.write(_FRAME.pack(len(frame)) + frame)
            child.stdin.flush()
        except (BrokenPipeError, OSError) as exc:
            self._child = None
            child.kill()
            child.wait()
            self._lost(f"the audit log process exited ({exc}; status {child.returncode})")
            return
        self._unsent.clear()
        self._pending = deque()
        if self._failing:
            self._failing = False

    def _lost(self, problem: str) -> None:
        """The child could not take the burst: keep it (block) or drop it (drop)."""
        with self._cond:
            self.write_errors += 1
            self.last_error = problem
            if self.on_full == "drop":
                self.dropped["write_error"] += len(self._unsent)
                self._unsent.clear()
        self._retry_at = time.monotonic() + RETRY_SECONDS
        # AuditLog's _wait_for_work takes no new event while _pending holds something
        # (policy block) and wakes this thread when the retry is due: the unsent burst
        # stands in for its pending records.
        self._pending = deque(self._unsent) if self.on_full == "block" else deque()  # type: ignore[arg-type]
        if not self._failing:
            self._failing = True
            log.error("audit log: %s; starting a new one", problem)

    def _next_timer(self, now: float) -> float:
        # Checkpoints and retention are the child's: this thread wakes for events, for
        # a retry, and for close, never on a timer of its own.
        return self._retry_at if self._failing else now + 3600.0

    def _abandon(self) -> None:
        lost = len(self._unsent)
        self._unsent.clear()
        self._pending = deque()  # events, not the writer's items: counted just now
        with self._cond:
            self.dropped["write_error"] += lost
        super()._abandon()

    def _stop_child(self) -> None:
        child, self._child = self._child, None
        if child is None:
            return
        assert child.stdin is not None
        with contextlib.suppress(OSError):
            child.stdin.close()  # the child writes what it has, its last checkpoint, exits
        try:
            child.wait(timeout=30.0)
        except subprocess.TimeoutExpired:
            log.error("audit log: the writer process did not finish in 30 s; stopping it")
            child.kill()
            child.wait()
        if self._reporter is not None:
            self._reporter.join(timeout=5.0)


# -- the child -----------------------------------------------------------------------------


def _status(out: IO[bytes], payload: dict[str, Any]) -> None:
    out.write(json.dumps(payload).encode() + b"\n")
    out.flush()


def _counters(audit: AuditLog) -> dict[str, Any]:
    return {
        "written": audit.written,
        "write_errors": audit.write_errors,
        "dropped": dict(audit.dropped),
        "last_error": audit.last_error,
        "depth": audit.depth + audit.waiting,
    }


def _read_frame(stream: IO[bytes]) -> list[Any] | None:
    head = stream.read(_FRAME.size)
    if len(head) < _FRAME.size:
        return None
    (size,) = _FRAME.unpack(head)
    body = stream.read(size)
    if len(body) < size:
        return None
    loaded: list[Any] = pickle.loads(body)
    return loaded


async def _consume(audit: AuditLog, stream: IO[bytes]) -> None:
    loop = asyncio.get_running_loop()
    while (burst := await loop.run_in_executor(None, _read_frame, stream)) is not None:
        for packed in burst:
            waiter = audit.submit(packed)  # a packed event: _PackedLog encodes it
            if waiter is not None:
                await waiter


def main() -> None:
    """The child: open the log the server describes, write what it sends until EOF."""
    from batchwire.telemetry.logs import configure_logging

    # The server closes this process's stdin to stop it; Ctrl-C in its terminal must not.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    arguments = json.loads(os.environ["BATCHWIRE_AUDIT_PROCESS"])
    configure_logging(arguments["log_level"], arguments["log_format"])
    out = sys.stdout.buffer
    loop = asyncio.new_event_loop()
    try:
        key_path = arguments["signing_key"]
        key = load_signing_key(Path(key_path)) if key_path else None
        audit = _PackedLog(Path(arguments["directory"]), signing_key=key, **arguments["options"])
        audit.start(loop)
    except AuditLogError as exc:
        _status(out, {"error": str(exc)})
        sys.exit(1)
    _status(out, {"ready": True})
    done = threading.Event()

    def report() -> None:
        while not done.wait(STATUS_SECONDS):
            _status(out, _counters(audit))

    reporter = threading.Thread(target=report, name="batchwire-audit-report", daemon=True)
    reporter.start()
    try:
        loop.run_until_complete(_consume(audit, sys.stdin.buffer))
    finally:
        audit.close(timeout=20.0)
        done.set()
        reporter.join()
        _status(out, _counters(audit))
        loop.close()


if __name__ == "__main__":
    main()
