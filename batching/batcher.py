"""ModelBatcher: the queue, the dispatch policy and the instances of one model version.

Flow: :meth:`ModelBatcher.submit` queues a request (one :class:`Entry` and one future per
request, nothing else) and awaits its future. A *scheduling pass* (``_schedule``) forms
batches from the queue head and hands each to an idle instance's worker thread; the
worker runs it and posts the finished job back to the loop, which resolves the futures
and runs the next pass. There is no scheduler task and nothing polls: a pass runs

- once per loop iteration in which requests arrived while an instance was idle (or a
  full batch could be staged) -- ``loop.call_soon``, coalesced, so requests arriving in
  one iteration are seen together; except that a request arriving *alone* (nothing else
  of the model queued or running) runs that pass in its own task after one yield, so a
  batch run inline answers it without a second trip through the loop;
- when a batch completes (an instance frees);
- when the one timer fires: the earliest of the batch-window end chosen by
  :mod:`batchwire.batching.policy` and the next queue timeout or deadline.

Pipelining: besides the batch it is running, an instance may hold one *staged* batch, but
only a complete one (max_batch_size reached, or the next request does not fit): its
worker starts it the moment the current batch ends, without a round trip through the
loop, while the loop keeps accepting and queueing. Batches that could still grow are
only formed when an instance is idle, so waiting requests accumulate into full batches
while every instance is busy.

Scheduler selection (Triton's): ``max_batch_size == 0`` (the model does not batch) or
``batching is None`` (no dynamic batching): each request runs alone, in arrival order,
on the next idle instance, as given (batch dimension kept when ``max_batch_size > 0``).

preserve_ordering: results are held back until every earlier-submitted request has been
answered, so responses complete in submission order across instances.

Concurrency rules:

- Loop thread: ``submit``, ``stop``, scheduling passes, timers, job completion, all
  queue/policy/counter state, futures and observer calls. Nothing here is locked
  because only the loop thread touches it.
- Worker threads (one per instance): everything a batch does (see
  :mod:`batchwire.batching.executor`). A worker receives a :class:`Job` (entries it
  reads, results/records it writes) and posts it back with
  ``loop.call_soon_threadsafe``; it never touches the queue, counters or futures.
- Shared: the Model (runners are per instance), the immutable spec and assembler.

Hang watchdog (config parameter ``batchwire.hang_timeout_ms``, default
:data:`DEFAULT_HANG_TIMEOUT_MS`, 0 turns it off). A batch that runs on an instance's
worker thread longer than the timeout marks that instance *hung*: a WARNING names the
model, version, instance and how long the batch has run, and the observer's optional
``hang_changed(model, version, hung_instances, new_hang)`` hook is called (the metrics
gauge ``batchwire_hung_instances``). While *every* instance is hung the model is not
ready (:attr:`ModelBatcher.hung`; :attr:`ModelBatcher.on_hang_change` tells the
registry, which reports ModelReady false and health NOT_SERVING) and new requests are
refused with UNAVAILABLE naming the hang. Requests already queued keep waiting (as
in Triton, a request with no deadline waits); one whose deadline passes is answered
DEADLINE_EXCEEDED at its deadline by the usual expiry timer. When a hung batch
returns, its instance is no longer hung and the model ready again. Python cannot
stop a thread, so a hung batch is never abandoned; its requests wait for it (or for
their caller's deadline, which gRPC enforces). Cost: one loop timer per batcher,
armed only while batches run, ticking every ``min(timeout / 4, 1 s)`` over the
instances; nothing per request but one integer test in :meth:`ModelBatcher.submit`.
A batch run inline on the loop thread blocks the loop, timers included: a thread
watches those instead (:mod:`batchwire.batching.inline_watch`: a WARNING and the
``batchwire_event_loop_blocked_seconds`` gauge, since nothing on the loop can answer).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import cast

import torch

from batchwire.batching.assembly import Assembler
from batchwire.batching.devices import resolve_devices, usable_cores
from batchwire.batching.executor import Executor, Instance, Job
from batchwire.batching.inline_watch import InlineBatches
from batchwire.batching.placement import Placement
from batchwire.batching.policy import DispatchPolicy
from batchwire.batching.queue import DONE, QUEUED, TAKEN, Entry, RequestQueue
from batchwire.core.errors import (
    InferenceError,
    ModelExecutionError,
    ModelLoadError,
    ModelNotReadyError,
    RequestCancelledError,
    ServerShuttingDownError,
)
from batchwire.core.model import Model
from batchwire.core.observer import BatchObserver, NullObserver
from batchwire.core.types import InferenceRequest, InferenceResult

__all__ = ["DEFAULT_HANG_TIMEOUT_MS", "HANG_TIMEOUT_KEY", "ModelBatcher"]

logger = logging.getLogger(__name__)

_monotonic = time.monotonic
_perf_ns = time.perf_counter_ns
_thread_ns = time.thread_time_ns
_INF = float("inf")

#: The config parameter holding the hang timeout (parsed and checked at load).
HANG_TIMEOUT_KEY = "batchwire.hang_timeout_ms"
#: A batch running longer than this (milliseconds) marks its instance hung.
DEFAULT_HANG_TIMEOUT_MS = 60_000


def _hang_timeout_ms(parameters: Mapping[str, str], where: str) -> int:
    """The spec's ``batchwire.hang_timeout_ms`` (the default when absent; 0: off).

    The repository checks the value at load (server/repository/params.py); specs built
    in code are checked here.
    """
    value = parameters.get(HANG_TIMEOUT_KEY)
    if value is None:
        return DEFAULT_HANG_TIMEOUT_MS
    try:
        millis = int(str(value).strip())
    except ValueError:
        millis = -1
    if millis < 0:
        raise ModelLoadError(
            f"{where}: parameter {HANG_TIMEOUT_KEY} must be an integer >= 0, got '{value}'"
        )
    return millis


class ModelBatcher:
    """Queues, batches and runs the requests of one model version on its instances.

    ``devices``: one per instance; None derives them from ``spec.instance_groups`` (see
    :mod:`batchwire.batching.devices`). The batcher owns ``model`` from here on: it
    closes the runners and the model on :meth:`stop` (or a failed :meth:`start`).

    Observer calls (loop thread; an exception in one is logged and ignored):
    ``queue_changed(model, version, level, depth)`` whenever a priority level's queue
    depth changes (``level`` is 1 when the model has no priority levels);
    ``batch_executed(record)`` once per runner call, failed ones included (a batch
    retried by halves yields a record per attempt); ``request_finished(request, error)``
    exactly once per :meth:`submit` call, refusals at submit and cancellations
    (``core.errors.RequestCancelledError``) included.
    """

    def __init__(
        self,
        model: Model,
        *,
        observer: BatchObserver | None = None,
        devices: Sequence[torch.device] | None = None,
        intra_op_threads: int | None = None,
    ) -> None:
        spec = model.spec
        self._model = model
        self._spec = spec
        self._where = f"model '{spec.name}' version '{spec.version}'"
        if devices is None:
            self._devices = resolve_devices(spec)
        else:
            self._devices = [torch.device(d) for d in devices]
            if not self._devices:
                raise ValueError(f"{self._where}: devices must name at least one device")
        batching = spec.batching
        self._batched = spec.max_batch_size > 0
        self._solo = batching is None
        self._max_items = spec.max_batch_size if self._batched else 1
        if observer is None or isinstance(observer, NullObserver):
            self._observer: BatchObserver | None = None
        else:
            self._observer = observer
        self._assembler = Assembler(spec)
        self._fixed_key = self._solo or self._assembler.fixed_key
        self._queue = RequestQueue(
            spec,
            max_items=self._max_items,
            solo=self._solo,
            on_depth=self._queue_changed if self._observer is not None else None,
        )
        delay = batching.max_queue_delay_us * 1e-6 if batching is not None else 0.0
        self._policy = DispatchPolicy(delay, batching.adaptive_delay if batching else False)
        self._preserve = bool(batching and batching.preserve_ordering)
        self._pipelined = not self._solo and self._max_items > 1
        self._hang_ms = _hang_timeout_ms(spec.parameters, self._where)
        self._hang_s = self._hang_ms / 1000.0
        self._watch_every = min(self._hang_s / 4.0, 1.0)
        self._hung = 0  # instances whose running batch is past the hang timeout
        self._watchdog: asyncio.TimerHandle | None = None
        #: Called (loop thread, no arguments) whenever an instance becomes hung or
        #: recovers, so :attr:`hung` (the model's readiness) may have changed.
        self.on_hang_change: Callable[[], None] | None = None
        self._executor = Executor(spec, self._assembler, record=self._observer is not None)
        execution = spec.execution
        explicit = execution.intra_op_threads or intra_op_threads
        cpu_instances = sum(1 for d in self._devices if d.type == "cpu")
        self._placement = Placement(
            execution.inline_below_us,
            explicit or max(1, usable_cores() // max(cpu_instances, 1)),
            adaptive=explicit is None,
        )
        # Batches run inline are watched from a thread (the loop timer cannot fire).
        self._inline = InlineBatches(
            spec.name, spec.version, self._hang_s if execution.inline_below_us else 0.0
        )

        # Set by start(); nothing reads it before (submit refuses until then).
        self._loop: asyncio.AbstractEventLoop
        self._instances: list[Instance] = []
        self._idle = 0  # instances with nothing to run
        self._jobs = 0  # batches handed to workers and not yet back
        self._running: set[Job] = set()
        self._in_flight = 0  # requests submitted and not yet answered
        self._seq = 0
        self._order: deque[Entry] = deque()  # preserve_ordering: answers not yet released
        self._kick: asyncio.Handle | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = _INF
        self._started = False
        self._accepting = False
        self._stopping = False
        self._closed = False
        self._drained: asyncio.Event | None = None
        self._stop_done: asyncio.Future[None] | None = None
        self._model_closed = False

    # -- public API ----------------------------------------------------------------

    @property
    def devices(self) -> list[torch.device]:
        """One device per instance, in instance order."""
        return list(self._devices)

    @property
    def queue_depth(self) -> int:
        """Requests queued (not yet in a batch), all priority levels."""
        return self._queue.depth

    @property
    def in_flight(self) -> int:
        """Requests submitted and not yet answered: queued, staged or running."""
        return self._in_flight

    @property
    def hung(self) -> bool:
        """Every instance is running a batch past the hang timeout (the model is not ready)."""
        return self._hung > 0 and self._hung == len(self._instances)

    @property
    def hung_instances(self) -> int:
        """Instances whose running batch is past the hang timeout now."""
        return self._hung

    @property
    def idle(self) -> bool:
        """Nothing queued or running, and no scheduling pass or timer pending."""
        return not self._in_flight and self._timer is None and self._kick is None

    async def start(self) -> None:
        """Create every instance (in its worker thread), warm it up, start accepting.

        Raises ModelLoadError when creating a runner or a warmup fails.
        """
        if self._started:
            return
        if self._stop_done is not None:
            raise ModelLoadError(f"{self._where}: cannot start a batcher that was stopped")
        loop = asyncio.get_running_loop()
        self._loop = loop
        instances: list[Instance] = []
        try:
            for index, device in enumerate(self._devices):
                threads = None if device.type == "cuda" else self._placement.threads
                instance = Instance(index, device, self._spec.name, threads)
                instances.append(instance)
                await loop.run_in_executor(
                    instance.pool, self._executor.load, self._model, instance
                )
        except BaseException as exc:
            for instance in instances:
                instance.pool.shutdown(wait=False, cancel_futures=True)
            if not isinstance(exc, Exception):
                raise
            await self._close_model()
            if isinstance(exc, ModelLoadError):
                raise
            raise ModelLoadError(
                f"{self._where}: loading failed: {type(exc).__name__}: {exc}"
            ) from exc
        self._instances = instances
        self._idle = len(instances)
        self._started = True
        self._accepting = True
        logger.info(
            "%s: %d instance(s) ready on %s",
            self._where,
            len(instances),
            ", ".join(str(d) for d in self._devices),
        )

    async def submit(self, request: InferenceRequest) -> InferenceResult:
        """Queue a validated request and wait for its result (raises InferenceError)."""
        if not self._accepting:
            if self._stopping:
                error: InferenceError = ServerShuttingDownError(
                    f"{self._where} is shutting down and accepts no new requests"
                )
            else:
                error = ModelNotReadyError(f"{self._where} is not ready (not started)")
            self._request_finished(request, error)
            raise error
        if self._hung and self._hung == len(self._instances):
            error = ModelNotReadyError(self._hung_message())
            self._request_finished(request, error)
            raise error
        request.timings.received_ns = _perf_ns()
        now = _monotonic()
        queue = self._queue
        try:
            level = queue.level_for(request.priority)
            key = None if self._fixed_key else self._assembler.shape_key(request.inputs)
            self._seq += 1
            entry = Entry(
                request,
                self._loop.create_future(),
                request.batch_size if self._batched else 1,
                key,
                level,
                self._seq,
                now,
            )
            queue.push(entry, now)
        except InferenceError as error:
            self._request_finished(request, error)
            raise
        self._in_flight += 1
        self._policy.on_arrival(now)
        if self._preserve:
            self._order.append(entry)
        expiry, deadline = entry.expires, entry.deadline
        if deadline is not None and (expiry is None or deadline < expiry):
            expiry = deadline
        if expiry is not None:
            self._arm(expiry)
        alone = self._idle and self._in_flight == 1
        if (
            not alone
            and self._kick is None
            and (self._idle or (self._pipelined and queue.items >= self._max_items))
        ):
            self._kick = self._loop.call_soon(self._schedule)
        try:
            if alone:
                # Nothing else of this model is queued or running: this task runs the
                # pass itself, after one yield so that requests arriving in this loop
                # iteration still join the batch (their submits run first). A batch
                # run inline then answers this request without the trip through the
                # loop that waking on its future costs (~0.1 ms at concurrency 1 here).
                await asyncio.sleep(0)
                if entry.state == QUEUED:
                    self._schedule()
            return await entry.future
        except asyncio.CancelledError:
            future = entry.future
            if future.done() and not future.cancelled():
                # Failed (a queue expiry, a stop) while this task waited in the yield
                # above, then cancelled before it resumed: nobody else reads the outcome.
                # Reading it keeps asyncio from logging "Future exception was never
                # retrieved" (the soak's server log is checked for ERROR records).
                future.exception()
            self._withdraw(entry)
            raise

    async def stop(self, *, drain: bool = True, timeout: float = 30.0) -> None:
        """Stop accepting; finish (drain) or fail queued work; close instances and model.

        New submits fail with ServerShuttingDownError at once. ``drain=True`` dispatches
        what is queued without waiting for fuller batches and lets it finish;
        ``drain=False`` fails every queued request with ServerShuttingDownError. Batches
        already handed to an instance (running or staged) finish either way. Then
        runners with a ``close()`` method are closed in their worker thread and
        ``Model.close()`` is called once (also after a failed :meth:`start`).

        Idempotent: a second call waits for the first to finish. Work still unanswered
        after ``timeout`` seconds fails with ServerShuttingDownError.
        """
        if self._stop_done is not None:
            await asyncio.shield(self._stop_done)
            return
        self._stop_done = asyncio.get_running_loop().create_future()
        try:
            await self._shutdown(drain, timeout)
        finally:
            self._stop_done.set_result(None)

    # -- scheduling (loop thread) --------------------------------------------------

    def _schedule(self, at: float = 0.0) -> None:
        """One scheduling pass: expire, then dispatch while an instance can take a batch."""
        if self._kick is not None:
            self._kick.cancel()
            self._kick = None
        if self._closed:
            return
        queue = self._queue
        now = _monotonic()
        if now < at:  # a timer may fire a little early (uvloop rounds to milliseconds)
            now = at
        if queue.expiring:
            self._expire(now)
        hold = None
        while queue.depth:
            instance = self._free_instance()
            staging = instance is None
            if instance is None:
                if not self._pipelined:
                    break
                instance = self._stageable_instance()
                if instance is None:
                    break
            plan = queue.plan()
            if plan is None:
                break
            count = len(plan.entries)
            if not plan.complete:
                if staging:
                    break
                if plan.cut:
                    count = plan.cut
                elif not self._stopping:
                    hold = self._policy.hold_until(
                        now,
                        plan.oldest,
                        count,
                        self._in_flight,
                        queue.depth,
                        plan.entries[0].request.pipelined,
                    )
                    if hold is not None:
                        break
            if self._dispatch(instance, queue.take(plan, count)):
                now = _monotonic()  # the batch ran inline: time has passed
        wake = queue.next_expiry() if queue.expiring else None
        if hold is not None and (wake is None or hold < wake):
            wake = hold
        if wake is not None:
            self._arm(wake)

    def _free_instance(self) -> Instance | None:
        if not self._idle:
            return None
        for instance in self._instances:
            if not instance.busy:
                return instance
        return None

    def _stageable_instance(self) -> Instance | None:
        for instance in self._instances:
            # Not behind a hung batch: there, a staged request would miss its deadline
            # expiry (only queued requests expire) and wait as long as the hang.
            if instance.busy == 1 and not instance.hung:
                return instance
        return None

    def _expire(self, now: float) -> None:
        failed = self._queue.expire(now)
        if not failed:
            return
        now_ns = _perf_ns()
        for entry, error in failed:
            timings = entry.request.timings
            timings.queue_ns = now_ns - timings.received_ns
            self._resolve(entry, error)
        if self._preserve:
            self._release()

    def _arm(self, when: float) -> None:
        """Make sure a pass runs at ``when`` (monotonic seconds); one timer at a time."""
        timer = self._timer
        if timer is not None:
            if self._timer_at <= when:
                return
            timer.cancel()
        self._timer_at = when
        delay = when - _monotonic()
        self._timer = self._loop.call_later(delay if delay > 0.0 else 0.0, self._on_timer, when)

    def _on_timer(self, when: float) -> None:
        self._timer = None
        self._timer_at = _INF
        self._schedule(when)

    def _dispatch(self, instance: Instance, entries: list[Entry]) -> bool:
        """Run ``entries`` on ``instance``; True when the batch ran (and was answered) inline.

        A CPU batch runs right here on the loop thread when
        :class:`~batchwire.batching.placement.Placement` says so (short batches, for
        which the two thread hand-offs cost more than the batch); otherwise it goes to
        the instance's worker thread with the intra-op thread count Placement picks.
        """
        job = Job(instance, entries)
        if not instance.cuda:
            placement = self._placement
            # Never beside a batch of the same instance (a staged batch): one instance
            # runs one batch at a time, whichever thread runs it.
            if not instance.busy and placement.run_inline():
                # One intra-op thread: parallel regions cost more than such batches take.
                torch.set_num_threads(1)
                inline = self._inline
                inline.running()
                try:
                    self._run_job(job, Exception)
                finally:
                    inline.returned()
                placement.record_inline(job.cpu_ns)
                self._complete(job)
                return True
            job.threads = placement.worker_threads()
        if not instance.busy:
            self._idle -= 1
        instance.busy += 1
        self._jobs += 1
        self._running.add(job)
        instance.pool.submit(self._work, job)
        if self._hang_s and self._watchdog is None:
            self._watchdog = self._loop.call_later(self._watch_every, self._watch)
        return False

    def _run_job(self, job: Job, catch: type[BaseException]) -> None:
        """Run ``job`` in this thread; an exception escaping the executor is a bug (a crash)."""
        start = _thread_ns()
        try:
            self._executor.run_job(job)
        except catch as exc:  # model errors are caught inside; this is a batchwire bug
            job.crash = exc
        finally:
            job.cpu_ns = _thread_ns() - start

    def _work(self, job: Job) -> None:
        """Worker thread: run the job, then post it back to the loop."""
        if job.threads:
            torch.set_num_threads(job.threads)  # this thread only; 0.2 us
        instance = job.instance
        job.started = _monotonic()
        instance.running = job
        # BaseException too: whatever happens, the job must get back to answer its requests.
        try:
            self._run_job(job, BaseException)
        finally:
            instance.running = None
        # RuntimeError: the loop is closed, nobody is waiting any more.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._job_done, job)

    def _job_done(self, job: Job) -> None:
        """Loop thread: a batch came back from a worker; answer it, then schedule again."""
        self._running.discard(job)
        instance = job.instance
        if instance.hung:
            self._recovered(instance, job)
        instance.busy -= 1
        if not instance.busy:
            self._idle += 1
        self._jobs -= 1
        if not instance.cuda:
            self._placement.record_worker(job.cpu_ns)
        self._complete(job)
        self._schedule()
        self._check_drained()

    def _complete(self, job: Job) -> None:
        """Loop thread: answer a finished job's requests and record it."""
        results = job.results
        if job.crash is not None:
            logger.error("%s: internal error running a batch", self._where, exc_info=job.crash)
            answered = {id(entry) for entry, _ in results}
            message = f"{self._where} failed: internal error: {job.crash!r}"
            results.extend(
                (entry, ModelExecutionError(message))
                for entry in job.entries
                if id(entry) not in answered and not entry.future.done()
            )
        if self._preserve:
            for entry, outcome in results:
                if entry.state != DONE:
                    entry.outcome = outcome
            self._release()
        else:
            for entry, outcome in results:
                self._deliver(entry, outcome)
        if results:
            self._policy.on_answered(_monotonic(), len(results))
        observer = self._observer
        if observer is not None:
            for record in job.records:
                self._notify(observer.batch_executed, record)

    # -- hang watchdog (loop thread) -----------------------------------------------

    def _watch(self) -> None:
        """Timer: mark instances whose running batch is past the hang timeout."""
        self._watchdog = None
        if self._closed:
            return
        now = _monotonic()
        newly = 0
        for instance in self._instances:
            job = instance.running
            if job is None or instance.hung or now - job.started < self._hang_s:
                continue
            instance.hung = True
            self._hung += 1
            newly += 1
            logger.warning(
                "%s: instance %d (%s) has been running a batch of %d request(s) for %.1f s, "
                "past %s=%d; reporting the instance hung",
                self._where,
                instance.index,
                instance.device,
                len(job.entries),
                now - job.started,
                HANG_TIMEOUT_KEY,
                self._hang_ms,
            )
        if newly:
            self._hang_changed(newly)
        if self._jobs:
            self._watchdog = self._loop.call_later(self._watch_every, self._watch)

    def _recovered(self, instance: Instance, job: Job) -> None:
        """A hung instance's batch came back: the instance serves again."""
        instance.hung = False
        self._hung -= 1
        logger.warning(
            "%s: instance %d (%s) is no longer hung: its batch returned after %.1f s",
            self._where,
            instance.index,
            instance.device,
            _monotonic() - job.started,
        )
        self._hang_changed(0)

    def _hang_changed(self, newly: int) -> None:
        """Tell the observer and the owner (``newly``: instances that just hung)."""
        if newly and self.hung:
            logger.warning("%s: every instance is hung; the model is not ready", self._where)
        observer = self._observer
        hook = getattr(observer, "hang_changed", None)  # optional observer method
        if hook is not None:
            self._notify(hook, self._spec.name, self._spec.version, self._hung, newly)
        if self.on_hang_change is not None:
            self._notify(self.on_hang_change)

    def _hung_message(self) -> str:
        count = len(self._instances)
        return (
            f"{self._where} is not ready: its {count} instance(s) are hung (each has been "
            f"running a batch for more than {HANG_TIMEOUT_KEY}={self._hang_ms} ms); new "
            "requests are refused until a batch returns"
        )

    # -- answering (loop thread) ---------------------------------------------------

    def _resolve(self, entry: Entry, outcome: InferenceResult | InferenceError) -> None:
        if self._preserve:
            if entry.state != DONE:
                entry.outcome = outcome
        else:
            self._deliver(entry, outcome)

    def _release(self) -> None:
        """preserve_ordering: deliver answers from the oldest request on, while ready."""
        order = self._order
        while order:
            entry = order[0]
            if entry.state != DONE:
                outcome = entry.outcome
                if outcome is None and not entry.future.done():
                    return
                self._deliver(entry, outcome)
            order.popleft()

    def _deliver(self, entry: Entry, outcome: InferenceResult | InferenceError | None) -> None:
        if entry.state == DONE:
            return
        future = entry.future
        error: InferenceError | None
        if future.done():  # cancelled by the caller: drop the result
            error = RequestCancelledError("request cancelled by the client")
        elif type(outcome) is InferenceResult:
            future.set_result(outcome)
            error = None
        else:
            # Not None: an entry is delivered without an outcome only once its future is
            # done (cancelled), which the first branch takes.
            error = cast(InferenceError, outcome)
            future.set_exception(error)
        self._finish(entry, error)

    def _finish(self, entry: Entry, error: InferenceError | None) -> None:
        entry.state = DONE
        entry.outcome = None
        self._in_flight -= 1
        self._request_finished(entry.request, error)
        if self._drained is not None:
            self._check_drained()

    def _withdraw(self, entry: Entry) -> None:
        """The submitting task was cancelled: take the request out, never run it."""
        if entry.state == DONE:
            return
        if entry.state == QUEUED:
            self._queue.remove(entry)
        self._finish(entry, RequestCancelledError("request cancelled by the client"))
        if self._preserve:
            self._release()

    def _check_drained(self) -> None:
        if self._drained is not None and not self._in_flight and not self._jobs:
            self._drained.set()

    # -- observer ------------------------------------------------------------------

    def _notify(self, method: Callable[..., object], *args: object) -> None:
        try:
            method(*args)
        except Exception:
            logger.exception("%s: observer %s raised; ignored", self._where, method.__qualname__)

    def _request_finished(self, request: InferenceRequest, error: InferenceError | None) -> None:
        observer = self._observer
        if observer is not None:
            self._notify(observer.request_finished, request, error)

    def _queue_changed(self, level: int, depth: int) -> None:
        observer = self._observer
        if observer is not None:
            self._notify(observer.queue_changed, self._spec.name, self._spec.version, level, depth)

    # -- shutdown ------------------------------------------------------------------

    async def _shutdown(self, drain: bool, timeout: float) -> None:
        self._accepting = False
        self._stopping = True
        if not self._started:
            self._closed = True
            await self._close_model()
            return
        if not drain:
            for entry in self._queue.drain():
                self._resolve(
                    entry,
                    ServerShuttingDownError(
                        f"{self._where} is shutting down; the queued request was not run"
                    ),
                )
            if self._preserve:
                self._release()
        timed_out = False
        if self._in_flight or self._jobs:
            self._drained = asyncio.Event()
            self._schedule()  # dispatch what is queued now: no more waiting for fuller batches
            self._check_drained()
            try:
                await asyncio.wait_for(self._drained.wait(), timeout)
            except asyncio.TimeoutError:
                timed_out = True
                self._abandon(timeout)
        self._closed = True
        if self._kick is not None:
            self._kick.cancel()
            self._kick = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        loop = asyncio.get_running_loop()
        for instance in self._instances:
            close = getattr(instance.runner, "close", None)
            if callable(close) and not timed_out:
                try:
                    await loop.run_in_executor(instance.pool, close)
                except Exception:
                    logger.exception("%s: closing instance %d failed", self._where, instance.index)
            instance.pool.shutdown(wait=not timed_out, cancel_futures=True)
            instance.runner = None
            instance.pinned.clear()
        if self._hung:  # stopped while hung: this version reports no hang any more
            for instance in self._instances:
                instance.hung = False
            self._hung = 0
            self._hang_changed(0)
        if timed_out:
            logger.warning("%s: not closing the model: a batch may still be running", self._where)
        else:
            await self._close_model()
        logger.info("%s: stopped", self._where)

    async def _close_model(self) -> None:
        """``Model.close()``, once, off the loop: the batcher owns the model it runs."""
        if self._model_closed:
            return
        self._model_closed = True
        try:
            await asyncio.get_running_loop().run_in_executor(None, self._model.close)
        except Exception:
            logger.exception("%s: closing the model failed", self._where)

    def _abandon(self, timeout: float) -> None:
        """Shutdown timed out: fail everything still unanswered, in any order."""
        logger.warning(
            "%s: shutdown timed out after %s s with %d request(s) unanswered; failing them",
            self._where,
            timeout,
            self._in_flight,
        )
        message = (
            f"{self._where} is shutting down and did not finish the request within {timeout} s"
        )
        held = [entry for entry in self._order if entry.outcome is not None]
        self._order.clear()
        for entry in held:  # preserve_ordering: answers that were ready go out as they are
            self._deliver(entry, entry.outcome)
        leftovers = self._queue.drain()
        for job in self._running:
            leftovers.extend(entry for entry in job.entries if entry.state == TAKEN)
        for entry in leftovers:
            self._deliver(entry, ServerShuttingDownError(message))
