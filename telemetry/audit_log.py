"""The audit log writer: one hash-chained JSON line per request, in rotating files.

:class:`AuditLog` takes :class:`~batchwire.telemetry.audit_records.AuditEvent` objects
from the event loop (:meth:`AuditLog.submit`: a deque append under a lock, nothing
else) and writes them from its own thread, which does all the hashing and the JSON.
:func:`load_signing_key` reads the Ed25519 key that signs the checkpoints.

Files. The log is a directory of files ``audit-000001.jsonl``, ``audit-000002.jsonl``...
(mode 0o600 in a 0o700 directory; opened ``O_APPEND | O_CREAT | O_EXCL | O_NOFOLLOW``,
so a symbolic link or an existing file is never written through). One process writes
a directory at a time: it holds an exclusive ``flock`` on the directory while open.

Records. Each line is one JSON record (format: :mod:`batchwire.telemetry.audit_records`),
each with ``seq`` (+1 per record, all types, across all files, from 1) and ``prev``
(hex SHA-256 of the previous line without its newline; ``"0" * 64`` for the first record
of a log). Times are RFC 3339 UTC with microseconds. The types, keys in written order:

- ``request``: ``seq, type, received, answered, request_id, model, version,
  model_sha256, config_sha256, principal, code, message, inputs, outputs, batch_id,
  queue_us, compute_us, cached, prev``. ``inputs`` and ``outputs`` are lists of
  ``{"name", "datatype", "shape", "sha256"}`` (the SHA-256 of the tensor's v2 wire bytes),
  plus ``"payload"`` (base64 of those bytes) when payloads are on, or ``"payload": null,
  "redacted": true`` for a name in the event's ``redact``; a tensor that cannot be
  encoded (wrong dtype) has ``"sha256": null`` and an ``"error"``. ``queue_us`` and
  ``compute_us`` are floats: microseconds with the nanosecond digits (12.345).
  ``batch_id`` is null when no batch ran the request. ``cached``: answered from the
  response cache.
- ``open``: ``seq, type, time, reason, file, previous_file, previous_end, prev``. The
  first record of every file. ``reason``: ``new`` (a new log), ``restart`` (a new
  :class:`AuditLog` continues the log), ``rotate`` (size or age), ``recover`` (the
  previous file cannot be continued after a write error). ``file``: this file's
  name; ``previous_file``: the one before it, null for the first file of a log.
  ``previous_end``: how that file ends -- ``clean`` (with a checkpoint), ``unclean``
  (with a complete record that is not one: the server stopped without closing the
  log, or the file was removed or could not be synced), ``torn`` (with a partial line:
  a crash or a failed write cut it), null for the first file. Its ``prev`` is the
  hash of the last complete line before it, so files chain like lines do.
- ``checkpoint``: ``seq, type, time, reason, key_id, signature, prev``. Signs
  ``b"batchwire-audit-v1 checkpoint <seq> <prev>"`` with Ed25519 (``signature``,
  base64; ``key_id``: first 16 hex of the SHA-256 of the raw public key); both null
  without a signing key. ``reason``: ``records`` (every ``checkpoint_records`` records),
  ``interval`` (``checkpoint_seconds`` after the first record not yet covered),
  ``rotate`` (the last record of a file before the next one opens), ``close``. The file
  is fsynced after each checkpoint.
- ``retention``: ``seq, type, time, removed, last_removed_hash, prev``. Written before
  retention deletes files (a crash in between leaves files that verify still checks):
  ``removed`` names them, oldest first; ``last_removed_hash`` is the hash of the last
  complete line of the last one, which the first kept file's ``open`` record has as
  its ``prev``: a verifier accepts a log that starts later when this record accounts
  for the files before it.

Rotation: before a request record that would take the file past ``rotate_bytes``, or
when the file was opened ``rotate_seconds`` ago (on the wall clock), the writer adds a
``rotate`` checkpoint, then opens the next file; a file holding only its ``open`` record
is never rotated. Retention: at start, after every rotation and every minute, files
other than the current one whose last record is older than ``retention_seconds`` (its
``time``, or ``answered``; the file's mtime when unreadable) are deleted, oldest first,
stopping at the first one that is not.

Continuing a log (:meth:`AuditLog.start` on a directory that holds one): the newest
file's last complete line gives the next ``seq`` and ``prev``; the writer never
appends to an existing file but opens the next one (``restart``). A newest file that
is empty is removed first; one that ends with a partial line (a crash mid-write) is
named ``torn`` in the new ``open`` record and a WARNING is logged, as is an
``unclean`` end.

The queue: at most ``queue_size`` events wait for the writer. An idle writer takes
them in bursts: it is woken when :data:`WAKE_RECORDS` wait (or the whole queue, when
smaller), or :data:`FLUSH_SECONDS` after the first of them was queued, so a request's
record reaches the file within that delay and a busy server pays one thread wake-up
per burst rather than one per request. When it is full, ``block``
makes :meth:`AuditLog.submit` return an awaitable that completes once the event is
queued (in arrival order; the writer frees room), so requests wait; ``drop`` drops
the event and counts it in ``dropped["queue_full"]``.

Write errors (disk full, EIO, the file or directory removed, a file size limit): a
record counts as written only once its whole line is written (a write to a file
removed while open counts as failed: ``fstat`` shows no link). After a partial
write the file ends with a torn line, and writing continues in a new file whose
``open`` record says so; after EFBIG (a file size limit: this file cannot grow) or a
failed fsync it continues in a new file too. Other failures (ENOSPC...) retry the
same file, and a removed directory is never created again (it may be an unmounted
volume). The first failure of an episode is logged at ERROR naming
the file and the OS error, and the first success after it at INFO. ``block``: the
failed records are kept and retried every :data:`RETRY_SECONDS`, so the queue fills
and requests wait; ``drop``: the failed request records are dropped and counted
(``dropped["write_error"]``) and each new record is tried again. ``write_errors``
counts failed attempts; ``last_error`` holds the latest message. A ``retention``
record is never dropped (no file is deleted before it is written).

Test seam: :meth:`AuditLog.pause` holds the writer (it finishes what it took, then
takes nothing more until :meth:`AuditLog.resume`), so a test can fill the queue.

Threads: ``submit``, ``pause`` and ``resume`` run on the event loop thread; ``close``
on any thread but the writer's; the counters are plain ints and a dict, updated by the
writer (``dropped["queue_full"]`` and ``dropped["closed"]`` by ``submit``), readable
from anywhere.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from batchwire.telemetry.audit_records import (
    GENESIS,
    AuditEvent,
    checkpoint_body,
    describe_key,
    file_name,
    file_number,
    key_id,
    line_hash,
    open_body,
    parse_rfc3339,
    record_line,
    request_body,
    retention_body,
)

try:
    import fcntl
except ImportError:  # not on Windows: the directory is then not locked
    fcntl = None  # type: ignore[assignment]

if TYPE_CHECKING:
    import asyncio

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

__all__ = ["ON_FULL", "RETRY_SECONDS", "AuditLog", "AuditLogError", "load_signing_key"]

log = logging.getLogger(__name__)

#: What a full queue does: ``block`` the request until there is room, or ``drop`` the record.
ON_FULL = ("block", "drop")
#: Under ``block``, records that failed to be written are tried again this often.
RETRY_SECONDS = 0.5
#: How often an idle writer looks for files past their retention.
RETENTION_CHECK_SECONDS = 60.0

#: Records written per ``os.write`` at most (and bytes, roughly): one syscall for a burst.
_CHUNK_RECORDS = 256
#: An idle writer is woken once this many records wait, or :data:`FLUSH_SECONDS` after
#: the first of them was queued, whichever comes first: one wake-up (a thread switch and
#: a GIL hand-over from the event loop) per burst, not per request.
WAKE_RECORDS = 64
FLUSH_SECONDS = 0.02
_CHUNK_BYTES = 4 * 2**20
_TAIL_STEP = 64 * 1024
_OPEN_FLAGS = (
    os.O_WRONLY
    | os.O_APPEND
    | os.O_CREAT
    | os.O_EXCL
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_CLOEXEC", 0)
)


class AuditLogError(Exception):
    """The audit log cannot be used: one line naming the path and what is wrong."""


def _os_error_text(exc: OSError, path: Path | str | None = None) -> str:
    """``<path>: <strerror> (<ERRNO NAME>)``: the message of a failed file operation."""
    where = exc.filename if exc.filename is not None else path
    reason = exc.strerror or str(exc)
    name = errno.errorcode.get(exc.errno or 0)
    return f"{where}: {reason}" + (f" ({name})" if name else "")


def load_signing_key(path: Path) -> Ed25519PrivateKey:
    """The Ed25519 private key in the PEM file ``path`` (``openssl genpkey -algorithm ed25519``).

    Raises AuditLogError naming the file and what it holds instead: nothing readable,
    no PEM, a public key or certificate, an encrypted key, a key of another algorithm.
    """
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise AuditLogError(
            f"cannot read the audit signing key {_os_error_text(exc, path)}"
        ) from None
    expected = (
        "expected an unencrypted Ed25519 private key in PEM (openssl genpkey -algorithm ed25519)"
    )
    if b"-----BEGIN " not in data:
        raise AuditLogError(f"audit signing key {path}: not a PEM file; {expected}")
    public = b"-----BEGIN PUBLIC KEY-----" in data or b"-----BEGIN CERTIFICATE-----" in data
    if public and b"PRIVATE KEY-----" not in data:
        raise AuditLogError(
            f"audit signing key {path}: holds a public key or certificate; {expected}"
        )
    try:
        key = load_pem_private_key(data, password=None)
    except TypeError:
        raise AuditLogError(f"audit signing key {path}: the key is encrypted; {expected}") from None
    except ValueError as exc:
        raise AuditLogError(
            f"audit signing key {path}: not a readable private key ({exc}); {expected}"
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise AuditLogError(f"audit signing key {path}: holds an {describe_key(key)}; {expected}")
    return key


def _last_line(path: Path) -> tuple[bytes | None, bool]:
    """The last complete line of ``path`` (no newline; None when it has none), and
    whether the file ends with a partial line."""
    with open(path, "rb") as file:
        size = file.seek(0, os.SEEK_END)
        if size == 0:
            return None, False
        data = b""
        position = size
        while True:
            step = min(_TAIL_STEP, position)
            position -= step
            file.seek(position)
            data = file.read(step) + data
            torn = not data.endswith(b"\n")
            end = data.rfind(b"\n")
            if end >= 0:
                start = data.rfind(b"\n", 0, end) + 1
                if start > 0 or position == 0:
                    return data[start:end], torn
            elif position == 0:
                return None, torn


@dataclass(slots=True)
class _Item:
    """A record waiting to be written: its body, placed at whatever seq the log reaches."""

    kind: str  # "request" or "retention"
    body: str
    #: Run once the line is written (retention: delete the files it names).
    after: Callable[[], None] | None = None


@dataclass(slots=True)
class _Line:
    data: bytes
    seq: int
    hash: str
    type: str
    #: Whether this line writes the first pending item.
    item: bool


@dataclass(slots=True)
class _File:
    number: int
    name: str
    path: Path
    fd: int
    opened_ns: int
    #: The open record's body until it is written, then None.
    open_body: str | None
    size: int = 0
    #: Complete lines in the file.
    records: int = 0
    #: Why writing cannot go on in this file: "torn" (it ends with a partial line),
    #: "lost" (removed while open), "unclean" (fsync failed); None while it can.
    broken: str | None = None


def _release(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class AuditLog:
    """The writer of a tamper-evident audit log (see the module doc for the format).

    Lifecycle: ``start(loop)``, then ``submit(event)`` per request from the loop thread,
    then ``close()``. Counters for /metrics: :attr:`depth`, :attr:`written`,
    :attr:`dropped`, :attr:`write_errors`, :attr:`last_error`.
    """

    def __init__(
        self,
        directory: Path,
        *,
        signing_key: Ed25519PrivateKey | None = None,
        payloads: bool = False,
        queue_size: int = 10000,
        on_full: str = "block",
        rotate_bytes: int = 100 * 2**20,
        rotate_seconds: float = 86400.0,
        retention_seconds: float = 183 * 86400.0,
        checkpoint_records: int = 1000,
        checkpoint_seconds: float = 60.0,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        """``clock``: the wall clock in nanoseconds since the epoch, for the times of
        open, checkpoint and retention records, file ages (rotation) and retention."""
        if on_full not in ON_FULL:
            raise ValueError(f"on_full: expected one of {', '.join(ON_FULL)}, got {on_full!r}")
        for name, value in (
            ("queue_size", queue_size),
            ("rotate_bytes", rotate_bytes),
            ("rotate_seconds", rotate_seconds),
            ("retention_seconds", retention_seconds),
            ("checkpoint_records", checkpoint_records),
            ("checkpoint_seconds", checkpoint_seconds),
        ):
            if not value > 0:
                raise ValueError(f"{name}: expected a value > 0, got {value!r}")
        self.directory = Path(directory)
        self.payloads = payloads
        self.queue_size = queue_size
        self.on_full = on_full
        self.rotate_bytes = rotate_bytes
        self.rotate_seconds = rotate_seconds
        self.retention_seconds = retention_seconds
        self.checkpoint_records = checkpoint_records
        self.checkpoint_seconds = checkpoint_seconds
        self._clock = clock
        self._key = signing_key
        self._key_id = key_id(signing_key.public_key()) if signing_key is not None else ""

        #: Request records written (whole line written).
        self.written = 0
        #: Records dropped, by reason: ``queue_full`` (policy drop), ``write_error``
        #: (policy drop, or still unwritten when close gave up), ``closed`` (submitted
        #: after close began or after the writer stopped).
        self.dropped: dict[str, int] = {"queue_full": 0, "write_error": 0, "closed": 0}
        #: Failed write attempts (each retry counts).
        self.write_errors = 0
        #: The latest write error, "" before any.
        self.last_error = ""

        self._cond = threading.Condition()
        self._queue: deque[AuditEvent] = deque()
        self._waiting: deque[tuple[AuditEvent, asyncio.Future[None]]] = deque()
        self._paused = False
        self._stopping = False
        self._accepting = False
        self._abort = False
        self._idle = False
        #: time.monotonic() when the oldest queued event was queued (valid while queued).
        self._first_at = 0.0
        #: The idle writer sleeps with nothing queued (its timer ignores new events).
        self._idle_empty = False
        #: Queued events that wake an idle writer (WAKE_RECORDS, or a smaller queue's size).
        self._wake_at = min(WAKE_RECORDS, queue_size)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock_fd: int | None = None

        # Writer-thread state (start() sets it up before the thread runs).
        self._pending: deque[_Item] = deque()
        self._file: _File | None = None
        #: (reason, previous file, previous end) of the next file to open.
        self._successor: tuple[str, str | None, str | None] = ("new", None, None)
        self._next_number = 1
        self._seq = 0
        self._head = GENESIS
        self._since_checkpoint = 0
        self._checkpoint_at = 0.0
        self._failing = False
        self._retry_at = 0.0
        self._wrote = False
        self._retention_due = True
        self._retention_checked = 0.0
        self._retention_pending = False

    # -- event loop side --------------------------------------------------------------

    @property
    def depth(self) -> int:
        """Events queued now, not yet taken by the writer."""
        return len(self._queue)

    @property
    def waiting(self) -> int:
        """Requests waiting for room in a full queue (policy block)."""
        return len(self._waiting)

    def submit(self, event: AuditEvent) -> Awaitable[None] | None:
        """Queue ``event`` for writing; loop thread only, no hashing or JSON here.

        Returns None when it is queued, or dropped (policy drop and the queue full:
        ``dropped["queue_full"]``; after close began: ``dropped["closed"]``). With
        policy block and a full queue, returns an awaitable that completes once the
        event is queued; the event is written even if the awaiting task is cancelled.
        """
        with self._cond:
            if not self._accepting:
                self.dropped["closed"] += 1
                return None
            queue = self._queue
            if not self._waiting and len(queue) < self.queue_size:
                if not queue:
                    self._first_at = time.monotonic()
                queue.append(event)
                # Wake an idle writer for a full burst, or for the first event when it
                # sleeps on an empty queue (its timer then knows nothing of this event).
                if self._idle and (len(queue) >= self._wake_at or self._idle_empty):
                    self._cond.notify()
                return None
            if self.on_full == "drop":
                self.dropped["queue_full"] += 1
                return None
            assert self._loop is not None
            future = self._loop.create_future()
            self._waiting.append((event, future))
            return future

    def pause(self) -> None:
        """Hold the writer: it takes nothing more from the queue until :meth:`resume`."""
        with self._cond:
            self._paused = True

    def resume(self) -> None:
        """Let a paused writer take from the queue again."""
        with self._cond:
            self._paused = False
            self._cond.notify()

    # -- lifecycle --------------------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Open the log (creating the directory, or continuing the log it holds) and start
        the writer thread. Raises AuditLogError when the directory cannot be created,
        locked or written, or its newest file cannot be continued."""
        if self._thread is not None:
            raise RuntimeError("the audit log is already started")
        self._loop = loop
        directory = self.directory
        if directory.exists() and not directory.is_dir():
            raise AuditLogError(f"audit log {directory}: not a directory")
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise AuditLogError(
                f"cannot create the audit log directory {_os_error_text(exc, directory)}"
            ) from None
        try:
            self._lock_directory()
            self._resume_log()
            self._ensure_file()
        except OSError as exc:
            self._close_files()
            raise AuditLogError(
                f"cannot write the audit log {_os_error_text(exc, directory)}"
            ) from None
        except AuditLogError:
            self._close_files()
            raise
        self._checkpoint_at = self._retention_checked = time.monotonic()
        self._accepting = True
        self._thread = threading.Thread(target=self._run, name="batchwire-audit-log", daemon=True)
        self._thread.start()

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued, then a final checkpoint; close the file; join the writer.

        Gives up after ``timeout`` seconds (writes keep failing under policy block):
        what is still unwritten is counted in ``dropped["write_error"]`` and logged.
        """
        thread = self._thread
        if thread is None:
            return
        with self._cond:
            self._stopping = True
            self._paused = False
            self._cond.notify_all()
        thread.join(timeout)
        if thread.is_alive():
            with self._cond:
                self._abort = True
                self._cond.notify_all()
            # The writer only waits on the condition or in one write syscall.
            thread.join(5.0)
        self._thread = None

    def _lock_directory(self) -> None:
        if fcntl is None:
            return
        self._lock_fd = os.open(self.directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise AuditLogError(
                f"audit log {self.directory}: another process is writing to this directory"
            ) from None

    def _resume_log(self) -> None:
        """Set the chain state from the files the directory holds (see the module doc)."""
        numbers = self._file_numbers()
        while numbers and (self.directory / file_name(numbers[-1])).stat().st_size == 0:
            empty = self.directory / file_name(numbers.pop())
            log.info("audit log: removing %s: it is empty (created just before a crash)", empty)
            empty.unlink()
        if not numbers:
            self._successor = ("new", None, None)
            return
        newest = self.directory / file_name(numbers[-1])
        line, torn = _last_line(newest)
        earlier = numbers[:-1]
        found_in = newest
        while line is None and earlier:
            found_in = self.directory / file_name(earlier.pop())
            line, _ = _last_line(found_in)
        last_type = None
        if line is not None:
            try:
                record = json.loads(line)
                seq = record["seq"]
                last_type = record.get("type")
                if not isinstance(seq, int):
                    raise TypeError(f"seq is {seq!r}")
            except (ValueError, TypeError, KeyError) as exc:
                raise AuditLogError(
                    f"cannot continue the audit log in {self.directory}: the last complete line "
                    f"of {found_in.name} is not a record ({exc}); move the directory away to "
                    f"start a new log"
                ) from None
            self._seq = seq
            self._head = line_hash(line)
        end = "torn" if torn else "clean" if last_type == "checkpoint" else "unclean"
        if end == "torn":
            log.warning(
                "audit log: %s ends with a partial line (a crash while writing); "
                "continuing the chain from its last complete line in a new file",
                newest,
            )
        elif end == "unclean":
            log.warning(
                "audit log: %s ends without its closing checkpoint (the server stopped "
                "without closing the log); continuing in a new file",
                newest,
            )
        self._next_number = numbers[-1] + 1
        self._successor = ("restart", newest.name, end)

    def _file_numbers(self) -> list[int]:
        numbers = (file_number(name) for name in os.listdir(self.directory))
        return sorted(n for n in numbers if n is not None)

    def _close_files(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                os.close(self._file.fd)
            self._file = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # -- writer thread ----------------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                events, wake, state = self._wait_for_work()
                self._wake(wake)
                if state == "abort":
                    self._abandon()
                    return
                for event in events:
                    try:
                        body = self._encode(event)
                    except Exception as exc:
                        # A field of the wrong type: the writer must survive it.
                        log.exception("audit log: cannot encode request %r", event.request_id)
                        self.dropped["write_error"] += 1
                        self.last_error = f"cannot encode request {event.request_id!r}: {exc}"
                        continue
                    self._pending.append(_Item("request", body))
                final = state == "final"
                self._work(final)
                if final and self._failing and self._file is not None and self._file.broken:
                    # The failure broke the file: the closing checkpoint may fit in a new one.
                    self._work(final, force=True)
                owed = self._pending or self._since_checkpoint > 0
                if final and (not self._failing or self.on_full == "drop" or not owed):
                    if self._failing:
                        log.error(
                            "audit log: closed without its final checkpoint: %s", self.last_error
                        )
                    return
        except BaseException:
            log.exception("audit log: the writer stopped on an unexpected error")
            self._abandon()
        finally:
            self._close_files()

    def _encode(self, event: AuditEvent) -> str:
        """The body of ``event``'s request record (writer thread)."""
        return request_body(event, self.payloads)

    def _wait_for_work(self) -> tuple[list[AuditEvent], list[asyncio.Future[None]], str]:
        """Events to write and futures to wake; state "work", "final" (all written,
        close requested) or "abort" (close gave up)."""
        with self._cond:
            while True:
                if self._abort:
                    return [], [], "abort"
                now = time.monotonic()
                retry_due = not self._failing or now >= self._retry_at
                if (
                    self._queue
                    and not self._paused
                    and (not self._pending or self.on_full == "drop")
                    and (
                        len(self._queue) >= self._wake_at
                        or self._waiting
                        or self._stopping
                        or now >= self._first_at + FLUSH_SECONDS
                    )
                ):
                    count = min(len(self._queue), _CHUNK_RECORDS)
                    events = [self._queue.popleft() for _ in range(count)]
                    if self._queue:  # the rest waits from now (their first_at is older)
                        self._first_at = now
                    wake = []
                    while self._waiting and len(self._queue) < self.queue_size:
                        event, future = self._waiting.popleft()
                        self._queue.append(event)
                        wake.append(future)
                    return events, wake, "work"
                if self._pending and retry_due:
                    return [], [], "work"
                if (
                    self._stopping
                    and not self._queue
                    and not self._waiting
                    and (retry_due or self.on_full == "drop")
                    and (not self._pending or self.on_full == "drop")
                ):
                    self._accepting = False
                    return [], [], "final"
                due = self._next_timer(now)
                if (
                    self._queue
                    and not self._paused
                    and (not self._pending or self.on_full == "drop")
                ):
                    due = min(due, self._first_at + FLUSH_SECONDS)
                if due <= now:
                    return [], [], "work"
                self._idle = True
                self._idle_empty = not self._queue
                self._cond.wait(due - now)
                self._idle = False
                self._idle_empty = False

    def _next_timer(self, now: float) -> float:
        due = self._retention_checked + RETENTION_CHECK_SECONDS
        if self._retention_due and not self._failing:
            return now
        if self._failing:
            if self._pending or self._since_checkpoint > 0:
                due = min(due, self._retry_at)
        elif self._since_checkpoint > 0:
            due = min(due, self._checkpoint_at + self.checkpoint_seconds)
        return due

    def _wake(self, futures: list[asyncio.Future[None]]) -> None:
        if not futures or self._loop is None:
            return
        for future in futures:
            try:
                self._loop.call_soon_threadsafe(_release, future)
            except RuntimeError:  # the loop is closed: nobody waits any more
                return

    def _work(self, final: bool, force: bool = False) -> None:
        """Write the pending records, then what is due: a checkpoint, retention.

        While failing, nothing is tried before the retry time unless ``force``."""
        now = time.monotonic()
        retry_due = force or not self._failing or now >= self._retry_at
        self._wrote = False
        try:
            if self._pending and (retry_due or self.on_full == "drop"):
                self._write_pending()
            if retry_due:
                if self._since_checkpoint > 0 and (
                    final or self._failing or now >= self._checkpoint_at + self.checkpoint_seconds
                ):
                    self._checkpoint("close" if final else "interval")
                if now >= self._retention_checked + RETENTION_CHECK_SECONDS:
                    self._retention_due = True
                if self._retention_due and not final:
                    self._retention_checked = now
                    self._retention_due = False
                    if self._schedule_retention():
                        self._write_pending()
        except OSError as exc:
            self._failed(exc)
            return
        if self._failing and self._wrote:
            self._failing = False
            log.info(
                "audit log: writing to %s works again (%d failed attempts so far, "
                "%d records dropped on write errors)",
                self.directory,
                self.write_errors,
                self.dropped["write_error"],
            )

    def _failed(self, exc: OSError) -> None:
        path = self._file.path if self._file is not None else self.directory
        text = f"cannot write the audit log {_os_error_text(exc, path)}"
        self.write_errors += 1
        self.last_error = text
        self._retry_at = time.monotonic() + RETRY_SECONDS
        if not self._failing:
            self._failing = True
            what = (
                "requests wait until it can be written (policy block)"
                if self.on_full == "block"
                else "request records are dropped and counted until it can be written (policy drop)"
            )
            log.error("audit log: %s; %s", text, what)
        if self.on_full == "drop":
            kept = deque(item for item in self._pending if item.kind != "request")
            self.dropped["write_error"] += len(self._pending) - len(kept)
            self._pending = kept

    def _abandon(self) -> None:
        """Close gave up (or the writer crashed): count what is lost, wake who waits."""
        with self._cond:
            self._accepting = False
            lost = len(self._queue) + len(self._waiting)
            wake = [future for _, future in self._waiting]
            self._queue.clear()
            self._waiting.clear()
        lost += sum(1 for item in self._pending if item.kind == "request")
        self._pending.clear()
        self.dropped["write_error"] += lost
        if lost:
            log.error(
                "audit log: closing without writing %d records: %s",
                lost,
                self.last_error or "the writer stopped",
            )
        self._wake(wake)

    # -- writing (writer thread, or start() before the thread runs) -----------------------

    def _write_pending(self) -> None:
        """Write the pending records in chunks, with the checkpoints and rotations they
        bring; raises OSError on the first failure (what was written stays committed)."""
        while self._pending:
            self._ensure_file()
            file = self._file
            assert file is not None
            seq, head, since = self._seq, self._head, self._since_checkpoint
            size, records = file.size, file.records
            lines: list[_Line] = []
            rotate = fsync = False
            for item in self._pending:
                if len(lines) >= _CHUNK_RECORDS or size - file.size >= _CHUNK_BYTES:
                    break
                data = record_line(seq + 1, item.body, head)
                if item.kind == "request" and self._rotation_due(file, size + len(data), records):
                    rotate = True
                    break
                seq, head, since = seq + 1, line_hash(data[:-1]), since + 1
                lines.append(_Line(data, seq, head, item.kind, True))
                size, records = size + len(data), records + 1
                if since >= self.checkpoint_records:
                    checkpoint = self._checkpoint_line(seq + 1, head, "records")
                    lines.append(checkpoint)
                    seq, head, since = checkpoint.seq, checkpoint.hash, 0
                    size, records = size + len(checkpoint.data), records + 1
                    fsync = True
            if lines:
                self._write_lines(lines, fsync=fsync)
            if rotate:
                self._rotate()

    def _rotation_due(self, file: _File, size: int, records: int) -> bool:
        if records <= 1:  # only its open record: a file never rotates empty
            return False
        if size > self.rotate_bytes:
            return True
        return self._clock() - file.opened_ns >= self.rotate_seconds * 1e9

    def _rotate(self) -> None:
        file = self._file
        assert file is not None
        if self._since_checkpoint > 0:
            self._write_lines([self._checkpoint_line(self._seq + 1, self._head, "rotate")], True)
        os.close(file.fd)
        self._file = None
        self._successor = ("rotate", file.name, "clean")
        self._ensure_file()
        # Retention runs at every rotation: its record follows the new file's open record.
        self._retention_checked = time.monotonic()
        self._schedule_retention()

    def _checkpoint(self, reason: str) -> None:
        self._ensure_file()
        self._write_lines([self._checkpoint_line(self._seq + 1, self._head, reason)], True)

    def _checkpoint_line(self, seq: int, head: str, reason: str) -> _Line:
        body = checkpoint_body(self._clock(), reason, seq, head, self._key, self._key_id)
        data = record_line(seq, body, head)
        return _Line(data, seq, line_hash(data[:-1]), "checkpoint", False)

    def _ensure_file(self) -> None:
        """Make sure a usable current file exists and starts with its open record."""
        file = self._file
        if file is not None and file.broken is not None:
            ending = "torn" if file.broken == "torn" else "unclean"
            self._successor = ("recover", file.name, ending)
            with contextlib.suppress(OSError):
                os.close(file.fd)
            self._file = file = None
        if file is None:
            reason, previous, end = self._successor
            number = self._next_number
            path = self.directory / file_name(number)
            fd = os.open(path, _OPEN_FLAGS, 0o600)
            self._next_number = number + 1
            now = self._clock()
            body = open_body(now, reason, path.name, previous, end)
            self._file = file = _File(number, path.name, path, fd, now, body)
            self._fsync_directory()
        if file.open_body is not None:
            data = record_line(self._seq + 1, file.open_body, self._head)
            self._write_lines([_Line(data, self._seq + 1, line_hash(data[:-1]), "open", False)])

    def _fsync_directory(self) -> None:
        # The new file's name must survive a crash as well as its lines.
        if not hasattr(os, "O_DIRECTORY"):
            return
        fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _write_lines(self, lines: list[_Line], fsync: bool = False) -> None:
        """Append ``lines`` to the current file; commit each line written whole.

        Raises OSError when the write fails (after committing the lines written whole:
        a partial line marks the file torn) or the file turns out removed (nothing is
        committed: the lines went to a file nobody can read).
        """
        file = self._file
        assert file is not None
        data = b"".join(line.data for line in lines)
        view = memoryview(data)
        done = 0
        error: OSError | None = None
        try:
            while done < len(data):
                done += os.write(file.fd, view[done:])
        except OSError as exc:
            error = exc
        if error is None:
            try:
                links = os.fstat(file.fd).st_nlink
            except OSError:  # cannot tell: the write itself succeeded
                links = 1
            if links == 0:
                # The file (or its directory) was removed: these lines went nowhere.
                file.broken = "lost"
                raise FileNotFoundError(
                    errno.ENOENT, "the file was removed while open", str(file.path)
                )
        offset = 0
        for line in lines:
            if offset + len(line.data) > done:
                break
            offset += len(line.data)
            self._commit(line)
        if offset != done:
            file.broken = "torn"
        elif error is not None and error.errno == errno.EFBIG:
            # This file cannot grow (a file size limit): the next one may.
            file.broken = "unclean"
        if error is not None:
            if error.filename is None:
                error.filename = str(file.path)
            raise error
        if fsync:
            try:
                os.fsync(file.fd)
            except OSError as exc:
                file.broken = "unclean"
                exc.filename = exc.filename or str(file.path)
                raise
        self._wrote = True

    def _commit(self, line: _Line) -> None:
        file = self._file
        assert file is not None
        self._seq, self._head = line.seq, line.hash
        file.size += len(line.data)
        file.records += 1
        if line.type == "checkpoint":
            self._since_checkpoint = 0
            self._checkpoint_at = time.monotonic()
        else:
            if self._since_checkpoint == 0:
                self._checkpoint_at = time.monotonic()
            self._since_checkpoint += 1
        if line.type == "open":
            file.open_body = None
        if line.item:
            item = self._pending.popleft()
            if item.kind == "request":
                self.written += 1
            if item.after is not None:
                item.after()

    # -- retention --------------------------------------------------------------------

    def _schedule_retention(self) -> bool:
        """Put a retention record for the files past the retention period first in the
        pending records (they are deleted once it is written); whether there was one."""
        file = self._file
        if self._retention_pending or file is None or file.broken is not None:
            return False
        cutoff = self._clock() - int(self.retention_seconds * 1e9)
        old: list[Path] = []
        try:
            for number in self._file_numbers():
                if number >= file.number:
                    break
                path = self.directory / file_name(number)
                newest = self._newest_time(path)
                if newest is None or newest >= cutoff:
                    break
                old.append(path)
            last = None
            for path in reversed(old):
                last, _ = _last_line(path)
                if last is not None:
                    break
        except OSError as exc:
            log.warning("audit log: retention skipped: cannot read %s", _os_error_text(exc))
            return False
        if not old:
            return False
        body = retention_body(
            self._clock(),
            [path.name for path in old],
            line_hash(last) if last is not None else GENESIS,
        )
        self._pending.appendleft(_Item("retention", body, lambda: self._remove(old)))
        self._retention_pending = True
        return True

    def _newest_time(self, path: Path) -> int | None:
        """When the last record of ``path`` was written (ns), from its time field, else
        the file's mtime; None when the file is gone."""
        try:
            line, _ = _last_line(path)
            if line is not None:
                record = json.loads(line)
                stamp = record.get("time") or record.get("answered")
                if isinstance(stamp, str):
                    return int(parse_rfc3339(stamp).timestamp() * 1e9)
        except (ValueError, AttributeError):
            pass
        except FileNotFoundError:
            return None
        return path.stat().st_mtime_ns

    def _remove(self, paths: list[Path]) -> None:
        self._retention_pending = False
        removed = []
        for path in paths:
            try:
                path.unlink(missing_ok=True)
                removed.append(path.name)
            except OSError as exc:
                log.warning("audit log: retention cannot remove %s", _os_error_text(exc))
        if removed:
            log.info(
                "audit log: retention removed %d files older than %g days: %s",
                len(removed),
                self.retention_seconds / 86400,
                ", ".join(removed),
            )
