"""The hang watchdog for batches run inline on the event loop thread.

The batcher's own watchdog (:mod:`batchwire.batching.batcher`) is a loop timer: it
cannot fire while the loop itself is busy, and a CPU batch run inline (short
batches, see :mod:`batchwire.batching.placement`) runs on the loop thread. A model
that is usually fast and then hangs holds the whole server: no request, health
check or stream is answered until it returns. Python cannot stop it; what can be
done is to say so where it is still seen. This module does that from one daemon
thread per process:

- A batcher marks the inline batch it runs (:meth:`InlineBatches.running` before,
  :meth:`InlineBatches.returned` after): one clock read and two attribute writes per
  inline batch, nothing per request.
- The thread wakes every ``min(timeout / 4, 1 s)`` (the shortest timeout among the
  batchers it watches). A batch inline for longer than its batcher's hang timeout
  (``batchwire.hang_timeout_ms``) is logged once, at WARNING, naming the model,
  version and how long it has held the loop; :func:`blocked` lists such batches for
  the metrics endpoint, which runs on its own thread and so still answers
  (``batchwire_event_loop_blocked_seconds``).
- When the batch returns, the batcher logs how long it held the loop (WARNING,
  only for a batch that was reported).

Concurrency: :meth:`running` and :meth:`returned` run on the batcher's loop thread;
the watch thread and :func:`blocked` (a scrape thread) only read a batch's start
time, a float replaced whole, so no lock guards it. The set of watched batchers is
guarded by a lock (added on the loop threads, read by the watch thread).
"""

from __future__ import annotations

import logging
import threading
import time
import weakref

log = logging.getLogger(__name__)

_monotonic = time.monotonic

#: Longest sleep of the watch thread between two looks, in seconds.
_MAX_PERIOD = 1.0


class InlineBatches:
    """One batcher's inline batches as the watch thread sees them (see the module docstring)."""

    __slots__ = ("__weakref__", "hang_s", "model", "reported", "started", "version")

    def __init__(self, model: str, version: str, hang_s: float) -> None:
        self.model = model
        self.version = version
        #: The hang timeout in seconds (0: not watched).
        self.hang_s = hang_s
        #: When the inline batch running now started (monotonic seconds); 0.0: none.
        self.started = 0.0
        #: ``started`` of the batch the watch thread reported as hung, if any.
        self.reported = 0.0
        if hang_s > 0:
            _WATCH.add(self)

    def running(self) -> None:
        """An inline batch starts now (loop thread)."""
        self.started = _monotonic()

    def returned(self) -> None:
        """The inline batch returned (loop thread); says so if it was reported hung."""
        started, self.started = self.started, 0.0
        if started and self.reported == started:
            log.warning(
                "model '%s' version %s: the batch run inline on the event loop returned "
                "after %.1f s; the server answers again",
                self.model,
                self.version,
                _monotonic() - started,
            )


class _Watch:
    """The process's watch thread and the batchers it watches (started on first use)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._watched: weakref.WeakSet[InlineBatches] = weakref.WeakSet()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, batches: InlineBatches) -> None:
        with self._lock:
            self._watched.add(batches)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="batchwire-inline-watch", daemon=True
                )
                self._thread.start()
        self._wake.set()  # a shorter timeout may shorten the period

    def snapshot(self) -> list[InlineBatches]:
        with self._lock:
            return list(self._watched)

    def _run(self) -> None:
        while True:
            watched = self.snapshot()
            period = min((b.hang_s / 4 for b in watched), default=_MAX_PERIOD)
            self._wake.wait(min(period, _MAX_PERIOD))
            self._wake.clear()
            now = _monotonic()
            for batches in watched:
                started = batches.started
                if not started or batches.reported == started:
                    continue
                if now - started >= batches.hang_s:
                    batches.reported = started
                    log.warning(
                        "model '%s' version %s: a batch run inline on the event loop has "
                        "held it for %.1f s (past batchwire.hang_timeout_ms=%d); the server "
                        "answers nothing until it returns",
                        batches.model,
                        batches.version,
                        now - started,
                        round(batches.hang_s * 1000),
                    )


_WATCH = _Watch()


def blocked() -> list[tuple[str, str, float]]:
    """(model, version, seconds) of each inline batch running past its hang timeout now."""
    now = _monotonic()
    rows = []
    for batches in _WATCH.snapshot():
        started = batches.started
        if started and now - started >= batches.hang_s:
            rows.append((batches.model, batches.version, now - started))
    return rows
