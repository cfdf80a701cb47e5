"""When to dispatch a batch that could still grow: the batch-window (wait) policy.

The scheduler asks this policy only when (a) a model instance is idle, (b) requests are
queued, and (c) the candidate batch -- the requests that batch with the oldest
highest-priority request -- can still grow: it is below ``max_batch_size``, the next
request of its shape group would still fit, and it has not reached a preferred batch
size. (A full batch, or one that reached a preferred size, is dispatched at once without
asking; a preferred size ``p`` counts when the running sum of the candidate's request
sizes equals ``p`` exactly, and the batch is then cut at the largest such ``p``.)
While every instance is busy nothing waits on a timer: requests accumulate in the queue
and the next batch is formed the moment an instance frees.

Let ``D`` = ``max_queue_delay_us``, ``oldest`` = when the candidate's first request was
queued, ``n`` = requests in the candidate. The policy answers "dispatch now" or "hold the
batch open until time ``t``"; a held batch is re-examined at ``t`` and on every arrival
and every completed batch, so it is dispatched as soon as it fills or a rule says so.

Always (both modes):

1. ``D == 0``, or the batcher is stopping: dispatch now.
2. ``now >= oldest + D``: dispatch now. No request ever waits for a fuller batch longer
   than ``D`` after it was queued while an instance is idle.
3. Requests outside the candidate are queued (another shape group): dispatch now, so one shape group never stalls another (Triton also sends the
   pending batch when the next request cannot join it).

Fixed window (``adaptive_delay=False``, Triton's behaviour): otherwise hold until
``oldest + D``.

Adaptive (``adaptive_delay=True``, the default); the statistics below are kept on the
event-loop thread, updated per arrival and per completed batch:

- ``gap``: EWMA (weight 1/4) of the time between consecutive arrivals, each sample
  clamped to ``4 * D`` (so one idle pause marks the model as "slow" without poisoning
  the average for long); it starts at ``4 * D``.
- ``last``: when the latest request arrived.
- ``in_flight``: requests of this model submitted and not yet answered (queued or
  executing), the candidate's included.
- ``returning``: requests answered recently whose clients have not sent a new request
  yet: +1 per answered request, -1 per arrival (never below 0), reset to 0 when nothing
  was answered for longer than ``D``, and when a batch held for them reaches the end of
  its window (rule 2: they did not come back within ``D``, so they have left). In a
  closed loop (each client sends its next request when it gets its answer) it counts
  the requests about to come back.

4. Alone: ``in_flight == n`` (nothing else of this model is queued or executing) and
   ``returning == 0``, unless the candidate's oldest request is *pipelined* (its caller
   sends without waiting for answers, so more of its requests may be on their way
   unread: a busy stream, see ``batchwire.server.stream_flow``): dispatch now. At
   concurrency 1 a request never waits: latency is model time plus transport.
5. Clients coming back: ``returning > 0``: hold until ``oldest + D``. Each arrival
   decrements ``returning``; when the last of them is back rule 4 (or 6) applies and the
   batch is dispatched at once, with everyone who was coming.
6. Arrival rate: hold while the next arrival is predicted inside the window and arrivals
   have not gone quiet: if ``last + gap < oldest + D`` and ``now < last + 2 * gap``, hold
   until ``min(oldest + D, last + 2 * gap)``; otherwise dispatch now.

The effect: at concurrency 1 nothing waits; under closed-loop load the batch is held
exactly until the clients of the previous batch are back, and never longer than ``D``
(what that wait buys: ``docs/benchmarks.md``, batching.policy).
"""

from __future__ import annotations

__all__ = ["DispatchPolicy"]

_GAP_WEIGHT = 0.25
_GAP_CLAMP = 4.0
_QUIET_GAPS = 2.0


class DispatchPolicy:
    """Arrival statistics plus the wait decision above. Loop thread only (no locking)."""

    __slots__ = ("_delay", "_last", "_last_answer", "adaptive", "gap", "returning")

    def __init__(self, max_delay_s: float, adaptive: bool) -> None:
        self._delay = max_delay_s
        self.adaptive = adaptive
        self.gap = _GAP_CLAMP * max_delay_s
        self._last = float("-inf")
        self._last_answer = float("-inf")
        self.returning = 0

    def on_arrival(self, now: float) -> None:
        """Record one arrival (called once per submitted request)."""
        sample = now - self._last
        clamp = _GAP_CLAMP * self._delay
        if sample > clamp:
            sample = clamp
        self.gap += _GAP_WEIGHT * (sample - self.gap)
        self._last = now
        if self.returning:
            self.returning -= 1

    def on_answered(self, now: float, count: int) -> None:
        """Record ``count`` requests answered (a completed batch)."""
        self.returning += count
        self._last_answer = now

    def hold_until(
        self,
        now: float,
        oldest: float,
        count: int,
        in_flight: int,
        queued: int,
        pipelined: bool = False,
    ) -> float | None:
        """None: dispatch the candidate now; else the time to hold it open until.

        ``count``: requests in the candidate; ``queued``: requests queued in all (the
        candidate's included); ``in_flight``: queued plus executing; ``pipelined``: the
        candidate's oldest request comes from a caller with requests in flight that the
        server has not read yet (rule 4 does not apply).
        """
        delay = self._delay
        end = oldest + delay
        if now >= end:
            # A whole window passed without the expected clients: they left (a stream
            # closed, callers went away). Forget them, or a client that stays would be
            # held a full window on every request, each answer re-arming the count.
            self.returning = 0
            return None
        if delay <= 0.0 or queued > count:
            return None
        if not self.adaptive:
            return end
        if self.returning and now - self._last_answer > delay:
            self.returning = 0
        returning = self.returning
        if in_flight <= count and not returning and not pipelined:
            return None
        if returning:
            return end
        gap = self.gap
        last = self._last
        quiet = last + _QUIET_GAPS * gap
        if last + gap < end and now < quiet:
            return quiet if quiet < end else end
        return None
