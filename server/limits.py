"""Caps on inference requests in flight: in the whole server and per client connection.

A request is *in flight* from the moment it enters the pipeline's first stage until
its result (or error) leaves it: while it is resolved, decoded, validated, queued in
its model's batcher and executed. Each request of a ``ModelStreamInfer`` stream counts
as one, like a unary call (a stream runs its requests concurrently).

Rules
-----
- :class:`Admit` is in every chain when a cap is set (``--max-inflight-requests``,
  ``--max-inflight-requests-per-connection``; 0 means no cap), right after the
  authorization stage: a caller refused there never takes a slot. With both at 0
  :func:`admit` leaves it out: no cost per request.
- A request arriving while its connection holds ``max_inflight_requests_per_connection``
  requests, or the server ``max_inflight_requests``, is refused at once with
  :class:`TooManyRequestsError` (RESOURCE_EXHAUSTED), the count and the option
  named in the message; the connection's cap is checked first. Nothing waits for a
  free slot: a refused request costs the server no queue entry, so bursts cannot
  build an unbounded backlog.
- The counts of a request are released exactly once however it ends: answered,
  failed, refused by a later stage, or cancelled (the caller went away, its deadline
  passed, the stream closed).
- A connection is whatever :attr:`~batchwire.server.inference_call.Caller.peer`
  returns (gRPC's ``context.peer()``: one string per TCP connection). A connection's
  entry is dropped as soon as it has no request in flight, so the table holds only
  connections with requests in flight (at most ``max_inflight_requests`` of them
  when that is set).

The counts are the data plane's (``DataPlane.request_caps``), shared by every chain
(chains are rebuilt when a model reloads; requests in flight through the old chain
still release theirs).

Concurrency: loop thread only; counts change only between awaits.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from batchwire.core.errors import InferenceError, StatusCode
from batchwire.server.pipeline import Stage

if TYPE_CHECKING:
    from batchwire.core.types import InferenceResult
    from batchwire.server.dataplane import DataPlane
    from batchwire.server.inference_call import InferenceCall

__all__ = ["Admit", "InFlight", "OpenStreams", "TooManyRequestsError", "admit", "in_flight"]


class TooManyRequestsError(InferenceError):
    """A cap on requests in flight is reached; the message names it and its option."""

    code = StatusCode.RESOURCE_EXHAUSTED
    # Triton counts requests turned away before running as REJECTED.
    reason = "rejected"


class InFlight:
    """The requests in flight of one data plane: in total and per connection.

    ``limit`` and ``per_connection_limit`` are the caps (0: none). ``by_connection``
    holds an entry only for connections with requests in flight, and only when
    ``per_connection_limit`` is set.
    """

    __slots__ = ("by_connection", "limit", "per_connection_limit", "total")

    def __init__(self, limit: int, per_connection_limit: int) -> None:
        if limit < 0 or per_connection_limit < 0:
            raise ValueError(
                "in-flight limits must be >= 0, got "
                f"{limit} (server) and {per_connection_limit} (per connection)"
            )
        self.limit = limit
        self.per_connection_limit = per_connection_limit
        self.total = 0
        self.by_connection: dict[str, int] = {}

    def enter(self, peer: str) -> None:
        """Count one more request of connection ``peer``, or raise TooManyRequestsError.

        ``peer`` is ignored without a per-connection cap. Nothing is counted when it raises.
        """
        cap = self.per_connection_limit
        held = 0
        if cap:
            held = self.by_connection.get(peer, 0)
            if held >= cap:
                raise TooManyRequestsError(
                    f"this connection has {held} inference requests in flight, its limit "
                    f"(--max-inflight-requests-per-connection={cap}); retry later or "
                    "spread requests over more connections"
                )
        if self.limit and self.total >= self.limit:
            raise TooManyRequestsError(
                f"the server has {self.total} inference requests in flight, its limit "
                f"(--max-inflight-requests={self.limit}); retry later"
            )
        self.total += 1
        if cap:
            self.by_connection[peer] = held + 1

    def leave(self, peer: str) -> None:
        """Release what :meth:`enter` counted for ``peer`` (once per admitted request)."""
        self.total -= 1
        if self.per_connection_limit:
            held = self.by_connection[peer] - 1
            if held:
                self.by_connection[peer] = held
            else:
                # Connections come and go: keep only those with requests in flight.
                del self.by_connection[peer]


class OpenStreams:
    """Streams open in one data plane (``ModelStreamInfer`` calls), capped at ``limit``.

    A front end calls :meth:`open` when a stream starts and the release it returns
    when the stream ends, however it ends. Past the cap a new stream is refused with
    TooManyRequestsError before it reads a request; streams already open are never
    cut. Loop thread only.
    """

    __slots__ = ("count", "limit")

    def __init__(self, limit: int) -> None:
        if limit < 0:
            raise ValueError(f"the open-stream limit must be >= 0, got {limit}")
        self.limit = limit
        self.count = 0

    def open(self) -> Callable[[], None]:
        """Count one more open stream; its release (call it once), or raise."""
        if self.limit and self.count >= self.limit:
            raise TooManyRequestsError(
                f"the server has {self.count} streams open, its limit "
                f"(--max-open-streams={self.limit}); retry later"
            )
        self.count += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.count -= 1

        return release


class Admit(Stage):
    """Counts each request in flight while the rest of the chain serves it; refuses past a cap."""

    __slots__ = ("_counts",)

    def __init__(self, counts: InFlight) -> None:
        super().__init__()
        self._counts = counts

    async def __call__(self, call: InferenceCall) -> InferenceResult:
        counts = self._counts
        # Reading the peer costs a call into gRPC: only when a per-connection cap needs it.
        peer = call.caller.peer() if counts.per_connection_limit else ""
        counts.enter(peer)
        try:
            # Inside the try: a stage that refuses synchronously raises from this call.
            return await self.next(call)
        finally:
            # Answered, failed or cancelled (CancelledError passes through here too).
            counts.leave(peer)


def in_flight(plane: DataPlane) -> InFlight | None:
    """``plane``'s counts, or None when it caps nothing (no chain has an :class:`Admit`)."""
    counts = plane.request_caps
    return counts if counts.limit or counts.per_connection_limit else None


def admit(plane: DataPlane, model: str | None) -> Stage | None:
    """An :class:`Admit` stage when ``plane`` caps requests in flight, else nothing.

    The caps and the counts every chain of the plane shares are its ``request_caps``.
    """
    counts = in_flight(plane)
    return None if counts is None else Admit(counts)
