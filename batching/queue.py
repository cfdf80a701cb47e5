"""The request queue: priority levels, per-level queue policies, shape groups, expiry.

Layout: one :class:`_Level` per priority level (level 1 first). Each level keeps, per
*shape key* (requests whose non-batch dimensions match, see
:meth:`batchwire.batching.assembly.Assembler.shape_key`), a FIFO deque of requests still
in time and a FIFO deque of requests whose queue timeout expired under
``TimeoutAction.DELAY``.

Scheduling order (Triton's): level by level; inside a level, requests in time in
arrival order, then delayed requests in arrival order. The head of the queue is the
first request in that order; a batch is formed from the head's shape group only,
walking the same order and stopping at ``max_batch_size`` or at the first request that
does not fit (requests are never split, never reordered within their group). Other
groups keep their place and their head becomes the queue head once it is the oldest.

Removal is lazy: a request leaving the queue (dispatched, cancelled, expired) is marked
and left in its deque until it reaches the front; depth counters are exact at all times.

Expiry: requests with a queue timeout or a deadline sit in one heap ordered by the
earliest of the two; :meth:`RequestQueue.expire` pops what is due. A queue timeout with
REJECT fails the request (QueueTimeoutError); with DELAY it moves the request to its
level's delayed deque. A passed deadline fails it (DeadlineExceededError). Entries that
left the queue stay in the heap until popped; the heap is compacted when more than half
of it is stale.

Concurrency: everything here runs on the event-loop thread only; nothing is locked.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING

from batchwire.core.errors import (
    DeadlineExceededError,
    InferenceError,
    InvalidInputError,
    QueueFullError,
    QueueTimeoutError,
)
from batchwire.core.spec import QueuePolicy, TimeoutAction

if TYPE_CHECKING:
    import asyncio

    from batchwire.core.spec import ModelSpec
    from batchwire.core.types import InferenceRequest, InferenceResult

__all__ = ["DONE", "QUEUED", "TAKEN", "Entry", "Plan", "RequestQueue"]

#: Entry states. QUEUED: in the queue. TAKEN: left the queue (in a batch, or removed
#: and about to be answered). DONE: answered (its future resolved or abandoned).
QUEUED, TAKEN, DONE = 0, 1, 2


class Entry:
    """One submitted request while the batcher holds it (one per request, nothing else)."""

    __slots__ = (
        "deadline",
        "delayed",
        "enqueued",
        "expires",
        "future",
        "items",
        "key",
        "level",
        "outcome",
        "request",
        "seq",
        "state",
        "timeout_us",
    )

    def __init__(
        self,
        request: InferenceRequest,
        future: asyncio.Future[InferenceResult],
        items: int,
        key: Hashable,
        level: _Level,
        seq: int,
        now: float,
    ) -> None:
        self.request = request
        self.future = future
        self.items = items
        self.key = key
        self.level = level
        self.seq = seq
        self.enqueued = now
        self.deadline = request.deadline
        self.expires: float | None = None
        self.timeout_us = 0
        self.delayed = False
        self.state = QUEUED
        #: Result or error waiting for its turn (preserve_ordering only).
        self.outcome: InferenceResult | InferenceError | None = None


class _Level:
    __slots__ = (
        "delayed",
        "depth",
        "groups",
        "index",
        "max_size",
        "number",
        "override",
        "reject",
        "timeout_us",
    )

    def __init__(self, number: int, policy: QueuePolicy) -> None:
        self.number = number
        self.index = number - 1
        self.timeout_us = policy.default_timeout_us
        self.override = policy.allow_timeout_override
        self.reject = policy.timeout_action is TimeoutAction.REJECT
        self.max_size = policy.max_queue_size
        self.groups: dict[Hashable, deque[Entry]] = {}
        self.delayed: dict[Hashable, deque[Entry]] = {}
        self.depth = 0


class Plan:
    """A candidate batch: the head's shape group in scheduling order, up to the limit."""

    __slots__ = ("complete", "cut", "deques", "entries", "items", "oldest")

    def __init__(self) -> None:
        self.entries: list[Entry] = []
        self.items = 0
        #: True when the batch cannot grow (max_batch_size reached, or the next request
        #: of the group does not fit).
        self.complete = False
        #: Requests up to the largest preferred batch size reached exactly (0: none).
        self.cut = 0
        self.oldest = 0.0
        #: (level, deque, is_delayed_deque) walked, for take().
        self.deques: list[tuple[_Level, deque[Entry], bool]] = []


def _stale(entry: Entry, delayed_deque: bool) -> bool:
    """True when ``entry`` no longer belongs at its place in the given kind of deque."""
    return entry.state != QUEUED or (entry.delayed and not delayed_deque)


class RequestQueue:
    """Priority levels with their policies; see the module docstring. Loop thread only."""

    def __init__(
        self,
        spec: ModelSpec,
        *,
        max_items: int,
        solo: bool,
        on_depth: Callable[[int, int], None] | None = None,
    ) -> None:
        self._where = f"model '{spec.name}' version '{spec.version}'"
        self._name = spec.name
        batching = spec.batching
        levels = batching.priority_levels if batching is not None else 0
        self._priorities = levels > 0
        if batching is None:
            self._levels = [_Level(1, QueuePolicy())]
            default = 1
        else:
            self._levels = [
                _Level(number, batching.queue_policy(number))
                for number in range(1, max(levels, 1) + 1)
            ]
            default = batching.default_priority_level if levels else 1
        self._default = self._levels[default - 1]
        self._max_items = max_items
        self._solo = solo
        self._preferred = frozenset(batching.preferred_batch_sizes) if batching else frozenset()
        self._on_depth = on_depth
        self._heap: list[tuple[float, int, Entry]] = []
        #: Requests queued (all levels).
        self.depth = 0
        #: Items (sum of batch dimensions) queued.
        self.items = 0

    # -- admission -----------------------------------------------------------------

    def level_for(self, priority: int) -> _Level:
        """The level a request's priority maps to; 0 means the default level.

        A model without priority levels has one level and ignores the priority
        (Triton's behaviour); with levels, a value outside 1..priority_levels is an error.
        """
        if priority == 0 or not self._priorities:
            return self._default
        levels = self._levels
        if 1 <= priority <= len(levels):
            return levels[priority - 1]
        raise InvalidInputError(
            f"priority {priority} is outside 1..{len(levels)} (the priority_levels of "
            f"{self._where}); 0 means the default level {self._default.number}"
        )

    def push(self, entry: Entry, now: float) -> None:
        """Queue ``entry`` (raises QueueFullError, leaving everything else as it was)."""
        level = entry.level
        if level.max_size and level.depth >= level.max_size:
            raise QueueFullError(
                f"queue for model '{self._name}' priority level {level.number} is full "
                f"(max_queue_size {level.max_size})"
            )
        timeout_us = level.timeout_us
        if level.override:
            override = entry.request.timeout_us
            if override:
                timeout_us = override
        when = entry.deadline
        if timeout_us:
            entry.timeout_us = timeout_us
            expires = entry.expires = now + timeout_us * 1e-6
            if when is None or expires < when:
                when = expires
        group = level.groups.get(entry.key)
        if group is None:
            group = level.groups[entry.key] = deque()
        group.append(entry)
        level.depth += 1
        self.depth += 1
        self.items += entry.items
        if when is not None:
            heap = self._heap
            if len(heap) > 64 and len(heap) > 2 * self.depth:
                heap[:] = [item for item in heap if item[2].state == QUEUED]
                heapq.heapify(heap)
            heapq.heappush(heap, (when, entry.seq, entry))
        if self._on_depth is not None:
            self._on_depth(level.number, level.depth)

    def _unlink(self, entry: Entry) -> None:
        entry.state = TAKEN
        level = entry.level
        level.depth -= 1
        self.depth -= 1
        self.items -= entry.items
        if self._on_depth is not None:
            self._on_depth(level.number, level.depth)

    def remove(self, entry: Entry) -> None:
        """Withdraw a queued entry (cancellation); it is dropped lazily from its deque."""
        if entry.state == QUEUED:
            self._unlink(entry)

    # -- expiry --------------------------------------------------------------------

    @property
    def expiring(self) -> bool:
        """True when some entry has a timeout or deadline pending (cheap check)."""
        return bool(self._heap)

    def next_expiry(self) -> float | None:
        """When the next timeout or deadline falls due (monotonic seconds), if any."""
        heap = self._heap
        while heap and heap[0][2].state != QUEUED:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def expire(self, now: float) -> list[tuple[Entry, InferenceError]]:
        """Apply timeouts and deadlines due by ``now``; returns the entries to fail."""
        heap = self._heap
        failed: list[tuple[Entry, InferenceError]] = []
        while heap and heap[0][0] <= now:
            _, seq, entry = heapq.heappop(heap)
            if entry.state != QUEUED:
                continue
            deadline = entry.deadline
            if deadline is not None and deadline <= now:
                self._unlink(entry)
                waited = (now - entry.enqueued) * 1e3
                failed.append(
                    (
                        entry,
                        DeadlineExceededError(
                            f"deadline exceeded while the request waited {waited:.1f} ms in "
                            f"the queue of {self._where}; it was not run"
                        ),
                    )
                )
                continue
            expires = entry.expires
            if expires is not None and expires <= now:
                level = entry.level
                entry.expires = None
                if level.reject:
                    self._unlink(entry)
                    failed.append(
                        (
                            entry,
                            QueueTimeoutError(
                                f"request timed out in the queue of {self._where} (priority "
                                f"level {level.number}): the queue timeout of "
                                f"{entry.timeout_us} us expired before it could be scheduled"
                            ),
                        )
                    )
                    continue
                entry.delayed = True
                group = level.delayed.get(entry.key)
                if group is None:
                    group = level.delayed[entry.key] = deque()
                group.append(entry)
            when = entry.expires
            if when is None or (deadline is not None and deadline < when):
                when = deadline
            if when is not None:
                heapq.heappush(heap, (when, seq, entry))
        return failed

    # -- batch formation -----------------------------------------------------------

    def _head(self) -> tuple[_Level, Hashable] | None:
        """The level and shape key of the first request in scheduling order."""
        for level in self._levels:
            if not level.depth:
                continue
            for groups, delayed in ((level.groups, False), (level.delayed, True)):
                best: Hashable = None
                best_seq = -1
                empty: list[Hashable] = []
                for key, group in groups.items():
                    while group and _stale(group[0], delayed):
                        group.popleft()
                    if not group:
                        empty.append(key)
                        continue
                    seq = group[0].seq
                    if best_seq < 0 or seq < best_seq:
                        best, best_seq = key, seq
                for key in empty:
                    del groups[key]
                if best_seq >= 0:
                    return level, best
        return None

    def plan(self) -> Plan | None:
        """The candidate batch for the queue head (nothing is removed)."""
        head = self._head()
        if head is None:
            return None
        first, key = head
        plan = Plan()
        entries = plan.entries
        limit = self._max_items
        preferred = self._preferred
        items = 0
        for level in self._levels[first.index :]:
            if not level.depth:
                continue
            for group, delayed in ((level.groups.get(key), False), (level.delayed.get(key), True)):
                if not group:
                    continue
                plan.deques.append((level, group, delayed))
                for entry in group:
                    if entry.state != QUEUED or (entry.delayed and not delayed):
                        continue
                    total = items + entry.items
                    if total > limit and entries:
                        plan.complete = True
                        break
                    entries.append(entry)
                    items = total
                    if self._solo or total >= limit:
                        plan.complete = True
                        break
                    if total in preferred:
                        plan.cut = len(entries)
                if plan.complete:
                    break
            if plan.complete:
                break
        plan.items = items
        plan.oldest = entries[0].enqueued
        return plan

    def take(self, plan: Plan, count: int) -> list[Entry]:
        """Remove the first ``count`` entries of ``plan`` from the queue and return them."""
        taken = plan.entries if count == len(plan.entries) else plan.entries[:count]
        on_depth = self._on_depth
        changed: set[_Level] | None = set() if on_depth is not None else None
        items = 0
        for entry in taken:
            entry.state = TAKEN
            entry.level.depth -= 1
            items += entry.items
            if changed is not None:
                changed.add(entry.level)
        self.depth -= len(taken)
        self.items -= items
        for _level, group, delayed in plan.deques:
            while group and _stale(group[0], delayed):
                group.popleft()
        if changed and on_depth is not None:
            for level in sorted(changed, key=lambda lv: lv.number):
                on_depth(level.number, level.depth)
        return taken

    def drain(self) -> list[Entry]:
        """Remove and return every queued entry, in arrival order."""
        entries = [
            entry
            for level in self._levels
            for groups in (level.groups, level.delayed)
            for group in groups.values()
            for entry in group
            if entry.state == QUEUED and not (entry.delayed and groups is level.groups)
        ]
        entries.sort(key=lambda entry: entry.seq)
        for entry in entries:
            self._unlink(entry)
        for level in self._levels:
            level.groups.clear()
            level.delayed.clear()
        self._heap.clear()
        return entries
