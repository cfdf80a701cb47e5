"""The response-cache stage: answers repeated requests from the cache, runs identical ones once.

Placed after validation and before submission (:data:`batchwire.server.stages.STAGES`),
so that only checked requests are hashed and a hit never reaches the batcher.

When it acts
------------
- **Caching** a model version's responses needs both Triton's switches: the server's
  cache (``--cache-config local,size=<bytes>``) and the version's ``response_cache {
  enable: true }`` in config.pbtxt. A model with the flag on a server without a cache
  is served without caching (as Triton, which says nothing; batchwire logs a warning
  when the model's chain is built, at its first request after each load).
- **Coalescing** (batchwire's, Triton has none): identical requests (same key) in
  flight at the same time run once. Per model, the config parameter
  ``batchwire.coalesce`` ("true"/"false"): default on where the version's responses
  are cached, off otherwise; "true" coalesces without a cache too. A value that is
  not a boolean is logged and the default used.
- A model with neither gets no stage in its chain (:meth:`ResponseCaching.create`
  returns None): nothing per request. A request that reads or writes shared memory
  passes through untouched (its outputs go to the client's regions, its inputs may
  change under the key).

Per request (module :mod:`batchwire.server.response_cache` for the key and the cache)
-------------------------------------------------------------------------------------
1. The key is computed; with caching, a hit answers at once: a new result whose
   outputs are the cached read-only arrays (the front end encodes them, with the
   request's own id). Counted as Triton counts a hit: a success, its time as the
   request's duration and as ``cache_hit``; no compute, no execution.
2. A miss without coalescing runs the rest of the chain; a successful result is
   stored and the time spent looking up and storing counted as ``cache_miss`` (and
   added to the request's duration, as Triton). Failures are never stored.
3. With coalescing, the first request for a key (the leader) runs the rest of the
   chain in its own coroutine, as without coalescing (no task: a key nobody else asks
   for meanwhile, the usual case, costs no more than caching alone); requests with the
   same key arriving before it ends (followers) wait for its answer, through
   ``asyncio.shield``, instead of running:

   - a follower cancelled (its caller went away, its deadline passed) leaves alone;
   - a leader cancelled while followers wait: the request is run again for them, in
     a task of its own (the one case where a key runs twice); with no follower it is
     just a cancelled request;
   - a successful run answers everyone with the same read-only arrays (each
     follower's result is its own object); a follower counts as a success and in
     ``coalesced`` (batchwire_coalesced_requests_total), neither hit nor miss;
   - a failed run is every waiter's failure: the leader gets the error, each
     follower a copy (counted once each as a failure), except errors that belong to
     the leader's own request rather than to the model's answer: its deadline
     (DEADLINE_EXCEEDED), its queue timeout, its cancellation. A follower then starts
     over (one of them becomes the next leader), so no follower fails for another
     caller's deadline.

   The run is the leader's request: its deadline, priority and timeout apply.

Concurrency: loop thread only. The in-flight table is the stage's (one per model
chain; a chain rebuilt after a reload starts a new one, the old runs finish for
their waiters).
"""

from __future__ import annotations

import asyncio
import copy
import logging
import time
from collections.abc import Awaitable
from functools import partial
from typing import TYPE_CHECKING

from batchwire.core.errors import (
    DeadlineExceededError,
    InferenceError,
    QueueTimeoutError,
    RequestCancelledError,
)
from batchwire.core.types import InferenceResult, RequestTimings
from batchwire.server.pipeline import Stage
from batchwire.server.response_cache import freeze_outputs, request_key

if TYPE_CHECKING:
    import numpy as np

    from batchwire.protos.model_config_pb2 import ModelConfig
    from batchwire.server.dataplane import DataPlane
    from batchwire.server.inference_call import InferenceCall
    from batchwire.server.registry import ServedModel
    from batchwire.server.response_cache import ResponseCache
    from batchwire.telemetry import Telemetry
    from batchwire.telemetry.stats import ModelStats

__all__ = ["COALESCE_KEY", "ResponseCaching"]

log = logging.getLogger(__name__)

#: The config parameter that turns coalescing on or off for a model.
COALESCE_KEY = "batchwire.coalesce"

#: Errors of the leader's own request, not of the model's answer: followers start over.
_LEADERS_OWN = (DeadlineExceededError, QueueTimeoutError, RequestCancelledError)

_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")

_perf_ns = time.perf_counter_ns


class _Policy:
    """What the stage does for one model version."""

    __slots__ = ("cache", "coalesce", "stats")

    def __init__(
        self, cache: ResponseCache | None, coalesce: bool, stats: ModelStats | None
    ) -> None:
        self.cache = cache
        self.coalesce = coalesce
        self.stats = stats

    @property
    def active(self) -> bool:
        return self.cache is not None or self.coalesce


class _Flight:
    """One run in progress for a key: its answer to come, and how many followers wait."""

    __slots__ = ("answer", "waiters")

    def __init__(self) -> None:
        self.answer: asyncio.Future[dict[str, np.ndarray]] = (
            asyncio.get_running_loop().create_future()
        )
        self.waiters = 0


def _coalesce_setting(model: str, config: ModelConfig, default: bool) -> bool:
    parameter = config.parameters.get(COALESCE_KEY)
    if parameter is None:
        return default
    text = parameter.string_value.strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    log.warning(
        "model '%s': parameters['%s'].string_value: '%s' is not a boolean (expected true "
        "or false); coalescing is %s (the default)",
        model,
        COALESCE_KEY,
        parameter.string_value,
        "on" if default else "off",
    )
    return default


def _follower_error(error: InferenceError) -> InferenceError:
    """A copy of the leader's error for a follower: counted in its statistics once more."""
    try:
        clone = copy.copy(error)
    except Exception:  # an error class copy cannot rebuild: share the object
        return error
    # The statistics mark an error once counted; the copy is a failure of its own.
    clone.__dict__.pop("_batchwire_counted", None)
    clone.__traceback__ = None
    return clone


class ResponseCaching(Stage):
    """Serves hits from the response cache and coalesces identical requests (module doc)."""

    __slots__ = ("_cache", "_flights", "_policies", "_telemetry")

    def __init__(self, plane: DataPlane, model: str) -> None:
        super().__init__()
        self._cache: ResponseCache | None = plane.response_cache
        self._telemetry: Telemetry | None = plane.telemetry
        #: version -> what to do for it.
        self._policies: dict[str, _Policy] = {}
        #: key -> the run in progress for it (coalescing only).
        self._flights: dict[bytes, _Flight] = {}

    @classmethod
    def create(cls, plane: DataPlane, model: str | None) -> ResponseCaching | None:
        """The stage for ``model``'s chain, or None when no version caches or coalesces."""
        if model is None:
            return None
        stage = cls(plane, model)
        registry = plane.registry
        active = False
        for version in registry.versions(model):
            try:
                served = registry.find(model, version)
            except InferenceError:
                continue
            if served.config is None:
                continue
            if served.config.response_cache.enable and stage._cache is None:
                log.warning(
                    "model '%s' version %s enables response_cache, but the server has no "
                    "response cache (start it with --cache-config local,size=<bytes>): its "
                    "responses are not cached",
                    model,
                    version,
                )
            active |= stage._policy(served).active
        return stage if active else None

    def _policy(self, served: ServedModel) -> _Policy:
        config = served.config
        caching = self._cache is not None and config is not None and config.response_cache.enable
        coalesce = (
            caching if config is None else _coalesce_setting(served.name, config, default=caching)
        )
        telemetry = self._telemetry
        stats = telemetry.stats(served.name, served.version) if telemetry is not None else None
        if stats is not None:
            stats.response_cache |= caching
            stats.coalescing |= coalesce
        policy = self._policies[served.version] = _Policy(
            self._cache if caching else None, coalesce, stats
        )
        return policy

    def __call__(self, call: InferenceCall) -> Awaitable[InferenceResult]:
        # After Validate: served, request and datatypes are set.
        request = call.request
        if request.shared is not None:  # type: ignore[union-attr]
            return self.next(call)
        served: ServedModel = call.served  # type: ignore[assignment]
        policy = self._policies.get(served.version)
        if policy is None:
            policy = self._policy(served)
        if policy.coalesce:
            return self._coalesced(call, policy)
        if policy.cache is not None:
            return self._cached(call, policy, policy.cache)
        return self.next(call)

    def _key(self, call: InferenceCall) -> bytes:
        served = call.served
        return request_key(served.name, served.version, call.request, call.datatypes)  # type: ignore[union-attr,arg-type]

    def _hit(self, start: int, outputs: dict[str, np.ndarray], policy: _Policy) -> InferenceResult:
        stats = policy.stats
        if stats is not None:
            stats.count_cache_hit(_perf_ns() - start)
        # A dict of its own: a stage outside this one may add to its result's outputs.
        return InferenceResult(dict(outputs), RequestTimings(received_ns=start))

    async def _cached(
        self, call: InferenceCall, policy: _Policy, cache: ResponseCache
    ) -> InferenceResult:
        start = _perf_ns()
        key = self._key(call)
        outputs = cache.get(key)
        if outputs is not None:
            return self._hit(start, outputs, policy)
        model = call.served.name  # type: ignore[union-attr]
        generation = cache.generation(model)
        lookup_ns = _perf_ns() - start
        result = await self.next(call)
        self._store(cache, key, model, generation, result, policy, lookup_ns)
        return result

    def _store(
        self,
        cache: ResponseCache,
        key: bytes,
        model: str,
        generation: int,
        result: InferenceResult,
        policy: _Policy,
        lookup_ns: int,
    ) -> dict[str, np.ndarray]:
        started = _perf_ns()
        outputs = freeze_outputs(result.outputs, own=True)
        cache.put(key, model, generation, outputs, policy.stats)
        result.outputs = dict(outputs)
        stats = policy.stats
        if stats is not None:
            stats.count_cache_miss(lookup_ns + _perf_ns() - started)
        return outputs

    async def _coalesced(self, call: InferenceCall, policy: _Policy) -> InferenceResult:
        start = _perf_ns()
        key = self._key(call)
        cache = policy.cache
        flights = self._flights
        while True:
            if cache is not None:
                outputs = cache.get(key)
                if outputs is not None:
                    return self._hit(start, outputs, policy)
            flight = flights.get(key)
            if flight is None:
                return await self._lead(call, key, policy, _perf_ns() - start)
            flight.waiters += 1
            try:
                # Shielded: a follower that goes away must not cancel the others' answer.
                answer = await asyncio.shield(flight.answer)
            except InferenceError as exc:
                if isinstance(exc, _LEADERS_OWN):
                    continue  # the leader's deadline or cancellation, not the answer: again
                raise _follower_error(exc) from None
            finally:
                flight.waiters -= 1
            stats = policy.stats
            if stats is not None:
                stats.count_coalesced(_perf_ns() - start)
            return InferenceResult(dict(answer), RequestTimings(received_ns=start))

    async def _lead(
        self, call: InferenceCall, key: bytes, policy: _Policy, lookup_ns: int
    ) -> InferenceResult:
        """Run the leader's request in its own coroutine (no task: the common case, a key
        nobody else asks for meanwhile, costs what caching alone costs) and publish the
        answer to the followers that came meanwhile."""
        flight = self._flights[key] = _Flight()
        try:
            outputs, result = await self._compute(call, key, policy, lookup_ns)
        except asyncio.CancelledError:
            if flight.waiters:
                # The leader's caller went away, its followers did not: run the request
                # again for them, in a task of its own (the one case that runs twice).
                task = asyncio.ensure_future(self._compute(call, key, policy, lookup_ns))
                _background.add(task)
                task.add_done_callback(partial(self._settle, key, flight))
            else:
                self._publish(key, flight, None, None)
            raise
        except BaseException as exc:
            self._publish(key, flight, None, exc)
            raise
        self._publish(key, flight, outputs, None)
        return result

    def _settle(self, key: bytes, flight: _Flight, task: asyncio.Task) -> None:
        """The run a cancelled leader left to its followers ended: answer them."""
        _background.discard(task)
        if task.cancelled():
            self._publish(key, flight, None, None)
            flight.answer.cancel()
            return
        exc = task.exception()
        self._publish(key, flight, None if exc else task.result()[0], exc)

    def _publish(
        self,
        key: bytes,
        flight: _Flight,
        outputs: dict[str, np.ndarray] | None,
        error: BaseException | None,
    ) -> None:
        # Out of the table before any follower wakes: a request arriving from now on
        # finds the cache entry, or starts a run of its own.
        if self._flights.get(key) is flight:
            del self._flights[key]
        answer = flight.answer
        if answer.done():
            return
        if outputs is not None:
            answer.set_result(outputs)
        elif error is not None and flight.waiters:
            # Only with followers: an exception nobody reads would be logged by asyncio.
            answer.set_exception(
                error
                if isinstance(error, InferenceError)
                else RequestCancelledError("the request this one waited for was not answered")
            )
        elif flight.waiters:
            answer.set_exception(
                RequestCancelledError("the request this one waited for was cancelled")
            )

    async def _compute(
        self, call: InferenceCall, key: bytes, policy: _Policy, lookup_ns: int
    ) -> tuple[dict[str, np.ndarray], InferenceResult]:
        """The request through the rest of the chain; its outputs frozen (and stored)."""
        cache = policy.cache
        if cache is None:
            result = await self.next(call)
            outputs = freeze_outputs(result.outputs, own=False)
            result.outputs = dict(outputs)
            return outputs, result
        model = call.served.name  # type: ignore[union-attr]
        generation = cache.generation(model)
        result = await self.next(call)
        return self._store(cache, key, model, generation, result, policy, lookup_ns), result


#: Runs left to the followers of a cancelled leader: asyncio keeps only weak references.
_background: set[asyncio.Task] = set()
